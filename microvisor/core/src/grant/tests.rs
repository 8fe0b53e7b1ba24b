//! Host tests of the grant-table policy over a fake machine: 64 frames whose
//! bytes are plain arrays, a frame table, four domains, and a fake page-table
//! "installer" that records the entries map/unmap ask for. Every refusal is
//! checked for its exact `GNTST_*` status and for leaving nothing behind
//! (entry flags, pins, frame references: the frame-table audit, with the
//! grant tables' external references, stays clean).

use std::collections::{HashMap, VecDeque};
use std::vec;
use std::vec::Vec;

use guest_abi::grant_table::{
    GNTMAP_APPLICATION_MAP, GNTST_BAD_COPY_ARG, GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF,
    GNTST_BAD_HANDLE, GNTST_BAD_PAGE, GNTST_GENERAL_ERROR, GNTST_NO_SPACE, GNTST_OKAY,
    GNTST_PERMISSION_DENIED, GTF_ACCEPT_TRANSFER, GTF_PCD, GTF_TRANSITIVE,
};

use super::*;
use crate::frametable::{ExternalRef, HV_L4_SLOTS, PageInfo};

pub(super) const N: usize = 64;
pub(super) const D0: u16 = 0;
pub(super) const D1: u16 = 1;
pub(super) const D2: u16 = 2;
pub(super) const D3: u16 = 3;
pub(super) const DOMS: [u16; 4] = [D0, D1, D2, D3];
/// `DOMID_IO`: a reserved id.
pub(super) const DOMID_IO: u16 = 0x7FF1;
pub(super) const PERMIT: u16 = GTF_PERMIT_ACCESS;
pub(super) const RO: u32 = GNTMAP_READONLY;
pub(super) const HOST: u32 = GNTMAP_HOST_MAP;
pub(super) const PTE: u32 = GNTMAP_CONTAINS_PTE;
pub(super) const VA: u64 = 0x4000_0000;

/// First frame of domain `d` (D1: 2..=21, D2: 22..=41, D3: 42..=61; D0 owns
/// nothing; 0 and 1 are the hypervisor's, 62 and 63 free). The first two
/// frames of each domain are reserved for its grant table.
pub(super) const fn base(d: u16) -> u64 {
    2 + (d as u64 - 1) * 20
}

/// Grant-table frame `i` (0 or 1) of domain `d`.
pub(super) const fn table_frame(d: u16, i: u64) -> u64 {
    base(d) + i
}

/// Data frame `i` (0..18) of domain `d`.
pub(super) const fn data(d: u16, i: u64) -> u64 {
    base(d) + 2 + i
}

/// Fake machine memory: frame bytes, the grant entries installed by the
/// fake installer (address -> entry), and scripted granter races.
pub(super) struct Mem {
    pub(super) frames: Vec<[u8; 4096]>,
    pub(super) ptes: HashMap<u64, u64>,
    /// Values `{flags, domid}` the granter writes into the entry just before
    /// each of the policy's next compare-and-exchanges (a concurrent change).
    pub(super) races: VecDeque<(u16, u16)>,
    pub(super) cmpxchgs: u32,
    /// v2: `(table frame, slot, flags)` the granter writes into a v2 entry's
    /// flags right after the policy's next status-word update (a change the
    /// policy must see when it reads the entry again).
    pub(super) v2_races: VecDeque<(u64, usize, u16)>,
}

impl Mem {
    pub(super) fn new() -> Self {
        Self {
            frames: vec![[0; 4096]; N],
            ptes: HashMap::new(),
            races: VecDeque::new(),
            cmpxchgs: 0,
            v2_races: VecDeque::new(),
        }
    }

    fn frame(&self, mfn: u64) -> &[u8; 4096] {
        usize::try_from(mfn)
            .ok()
            .and_then(|m| self.frames.get(m))
            .expect("access outside the machine")
    }

    fn frame_mut(&mut self, mfn: u64) -> &mut [u8; 4096] {
        usize::try_from(mfn)
            .ok()
            .and_then(|m| self.frames.get_mut(m))
            .expect("access outside the machine")
    }

    /// A guest's plain write of a whole grant entry.
    pub(super) fn write_entry(&mut self, mfn: u64, slot: usize, e: GrantEntryV1) {
        assert!(slot < 512);
        let f = self.frame_mut(mfn);
        let o = slot * 8;
        f[o..o + 2].copy_from_slice(&e.flags.to_le_bytes());
        f[o + 2..o + 4].copy_from_slice(&e.domid.to_le_bytes());
        f[o + 4..o + 8].copy_from_slice(&e.frame.to_le_bytes());
    }

    fn write_header(&mut self, mfn: u64, slot: usize, h: u32) {
        let o = slot * 8;
        self.frame_mut(mfn)[o..o + 4].copy_from_slice(&h.to_le_bytes());
    }
}

impl TableMemory for Mem {
    fn read(&self, mfn: u64, idx: usize) -> u64 {
        let f = self.frame(mfn);
        u64::from_le_bytes(f[idx * 8..idx * 8 + 8].try_into().unwrap())
    }
    fn write(&mut self, mfn: u64, idx: usize, val: u64) {
        self.frame_mut(mfn)[idx * 8..idx * 8 + 8].copy_from_slice(&val.to_le_bytes());
    }
    fn flush_tlbs(&mut self, _req: crate::frametable::FlushRequest<'_>) {}
}

impl GrantMemory for Mem {
    fn read_entry(&self, mfn: u64, slot: usize) -> GrantEntryV1 {
        assert!(slot < 512, "policy read slot {slot}");
        let f = self.frame(mfn);
        let o = slot * 8;
        GrantEntryV1 {
            flags: u16::from_le_bytes([f[o], f[o + 1]]),
            domid: u16::from_le_bytes([f[o + 2], f[o + 3]]),
            frame: u32::from_le_bytes(f[o + 4..o + 8].try_into().unwrap()),
        }
    }
    fn cmpxchg_header(&mut self, mfn: u64, slot: usize, old: u32, new: u32) -> u32 {
        assert!(slot < 512, "policy cmpxchg slot {slot}");
        self.cmpxchgs += 1;
        if let Some((flags, domid)) = self.races.pop_front() {
            self.write_header(mfn, slot, entry_header(flags, domid));
        }
        let e = self.read_entry(mfn, slot);
        let cur = entry_header(e.flags, e.domid);
        if cur == old {
            self.write_header(mfn, slot, new);
        }
        cur
    }
    fn clear_flags(&mut self, mfn: u64, slot: usize, bits: u16) {
        let mut e = self.read_entry(mfn, slot);
        e.flags &= !bits;
        self.write_header(mfn, slot, entry_header(e.flags, e.domid));
    }
    fn read_entry_v2(&self, mfn: u64, slot: usize) -> GrantEntryV2 {
        assert!(slot < 256, "policy v2 read slot {slot}");
        let f = self.frame(mfn);
        let o = slot * 16;
        let w = |i: usize| u64::from_le_bytes(f[o + i..o + i + 8].try_into().unwrap());
        let (lo, hi) = (w(0), w(8));
        GrantEntryV2 {
            flags: lo as u16,
            domid: (lo >> 16) as u16,
            word1: (lo >> 32) as u32,
            frame: hi,
        }
    }
    fn status_set(&mut self, mfn: u64, index: usize, bits: u16) {
        let v = self.read_status(mfn, index) | bits;
        self.frame_mut(mfn)[index * 2..index * 2 + 2].copy_from_slice(&v.to_le_bytes());
        if let Some((tf, slot, flags)) = self.v2_races.pop_front() {
            self.frame_mut(tf)[slot * 16..slot * 16 + 2].copy_from_slice(&flags.to_le_bytes());
        }
    }
    fn status_clear(&mut self, mfn: u64, index: usize, bits: u16) {
        let v = self.read_status(mfn, index) & !bits;
        self.frame_mut(mfn)[index * 2..index * 2 + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn read_status(&self, mfn: u64, index: usize) -> u16 {
        assert!(index < 2048, "policy status index {index}");
        let f = self.frame(mfn);
        u16::from_le_bytes([f[index * 2], f[index * 2 + 1]])
    }
    fn write_raw(&mut self, mfn: u64, slot: usize, value: u64) {
        assert!(slot < 512, "policy raw write slot {slot}");
        self.frame_mut(mfn)[slot * 8..slot * 8 + 8].copy_from_slice(&value.to_le_bytes());
    }
    fn zero_frame(&mut self, mfn: u64) {
        *self.frame_mut(mfn) = [0; 4096];
    }
    fn copy(&mut self, dst: u64, dst_off: usize, src: u64, src_off: usize, len: usize) {
        assert!(
            dst_off + len <= 4096 && src_off + len <= 4096,
            "copy crosses a page"
        );
        let bytes: Vec<u8> = self.frame(src)[src_off..src_off + len].to_vec();
        self.frame_mut(dst)[dst_off..dst_off + len].copy_from_slice(&bytes);
    }
}

/// Domains 0..=3, any of which can be removed.
pub(super) struct World {
    pub(super) tables: Vec<Option<Box<GrantTable>>>,
}

impl Domains for World {
    fn get(&mut self, dom: u16) -> Option<&mut GrantTable> {
        self.tables.get_mut(usize::from(dom))?.as_deref_mut()
    }
}

impl World {
    pub(super) fn t(&self, d: u16) -> &GrantTable {
        self.tables[usize::from(d)].as_deref().unwrap()
    }
}

/// The fake installer: writes the entry unless one is already there.
pub(super) fn install(_: &FrameTable<'_>, mem: &mut Mem, m: &Mapping) -> bool {
    if mem.ptes.contains_key(&m.host_addr) {
        return false;
    }
    mem.ptes.insert(m.host_addr, m.pte());
    true
}

/// The fake remover: clears the entry only if it is exactly the mapping's
/// (XSA-234).
pub(super) fn remove(_: &FrameTable<'_>, mem: &mut Mem, m: &Mapping) -> bool {
    if mem.ptes.get(&m.host_addr) != Some(&m.pte()) {
        return false;
    }
    mem.ptes.remove(&m.host_addr);
    true
}

/// Frame table and world at boot: frames assigned, each domain 1..=3 with a
/// one-frame table, domain 0 with none.
pub(super) fn boot(ft: &FrameTable<'_>, mem: &mut Mem, w: &mut World) {
    ft.reserve_for_hypervisor(0).unwrap();
    ft.reserve_for_hypervisor(1).unwrap();
    for d in [D1, D2, D3] {
        for mfn in base(d)..base(d) + 20 {
            ft.assign(mfn, d).unwrap();
        }
    }
    w.tables = DOMS
        .iter()
        .map(|_| Some(Box::new(GrantTable::new(MAX_GRANT_FRAMES))))
        .collect();
    for d in [D1, D2, D3] {
        let op = setup_op(DOMID_SELF, 1);
        let mut next = Some(table_frame(d, 0));
        let got = setup_table(w, ft, mem, d, &op, false, || next.take()).unwrap();
        assert_eq!(got.as_slice(), &[table_frame(d, 0)]);
    }
}

macro_rules! world {
    ($ft:ident, $mem:ident, $w:ident) => {
        let mut pages = vec![PageInfo::default(); N];
        #[allow(unused_mut)]
        let mut $ft = FrameTable::new(&mut pages, [0; HV_L4_SLOTS]);
        #[allow(unused_mut)]
        let mut $mem = Mem::new();
        #[allow(unused_mut)]
        let mut $w = World { tables: Vec::new() };
        boot(&mut $ft, &mut $mem, &mut $w);
        audit(&$ft, &$mem, &$w);
    };
}
#[allow(unused_imports)]
pub(super) use world;

/// Every external reference the grant tables hold.
pub(super) fn grant_refs(w: &World) -> Vec<(u64, ExternalRef)> {
    w.tables
        .iter()
        .flatten()
        .flat_map(|t| t.external_refs())
        .collect()
}

/// The frame-table audit with the grants' external references.
pub(super) fn audit(ft: &FrameTable<'_>, mem: &Mem, w: &World) {
    if let Err(e) = ft.audit(mem, &grant_refs(w)) {
        panic!("audit: {e}");
    }
}

pub(super) fn setup_op(dom: u16, nr_frames: u32) -> GnttabSetupTable {
    GnttabSetupTable {
        dom,
        nr_frames,
        ..Default::default()
    }
}

pub(super) fn map_op(dom: u16, gref: u32, flags: u32, host_addr: u64) -> GnttabMapGrantRef {
    GnttabMapGrantRef {
        host_addr,
        flags,
        ref_: gref,
        dom,
        ..Default::default()
    }
}

pub(super) fn unmap_op(handle: u32, host_addr: u64) -> GnttabUnmapGrantRef {
    GnttabUnmapGrantRef {
        host_addr,
        handle,
        ..Default::default()
    }
}

/// Granter `g` writes entry `gref` (plain write, as a guest does).
pub(super) fn grant(mem: &mut Mem, w: &World, g: u16, gref: u32, flags: u16, to: u16, frame: u64) {
    let (tf, slot) = w.t(g).locate_v1(gref).expect("grant ref in table");
    mem.write_entry(
        tf,
        slot,
        GrantEntryV1 {
            flags,
            domid: to,
            frame: u32::try_from(frame).unwrap(),
        },
    );
}

/// Entry `gref` of granter `g` as the guest sees it.
pub(super) fn entry(mem: &Mem, w: &World, g: u16, gref: u32) -> GrantEntryV1 {
    let (tf, slot) = w.t(g).locate_v1(gref).unwrap();
    mem.read_entry(tf, slot)
}

fn flags_of(mem: &Mem, w: &World, g: u16, gref: u32) -> u16 {
    entry(mem, w, g, gref).flags
}

fn count(ft: &FrameTable<'_>, mfn: u64) -> (u32, u32) {
    let p = ft.info(mfn).unwrap();
    (p.count(), p.type_count())
}

// ------------------------------------------------------------ basics

#[test]
fn grant_sizes_fit_static_budget() {
    // Every domain has one; its active records (grown a frame at a time)
    // and its maptrack (24 KiB when full) are not in it.
    assert!(
        size_of::<GrantTable>() <= 200,
        "{}",
        size_of::<GrantTable>()
    );
    assert_eq!(ACTIVE_BYTES_PER_FRAME, 512 * 8 + 256 * 4);
    assert_eq!(GrantTable::new(1).maptrack_slots(), 0);
    assert_eq!(MAX_GRANT_ENTRIES, 2048);
    assert_eq!(ENTRIES_PER_FRAME, 512);
    assert_eq!(GrantTable::new(0).max_frames(), 1);
    assert_eq!(GrantTable::new(99).max_frames(), MAX_GRANT_FRAMES);
}

#[test]
fn grant_boot_tables_hold_frame_refs() {
    world!(ft, mem, w);
    // The table frame carries its allocation and the table's write
    // reference, so the guest cannot give it back while it is a grant
    // table, nor make it a page table or a descriptor page.
    assert_eq!(count(&ft, table_frame(D1, 0)), (2, 1));
    assert_eq!(
        ft.info(table_frame(D1, 0)).unwrap().page_type(),
        PageType::Writable
    );
    assert_eq!(ft.info(table_frame(D1, 0)).unwrap().hv_writers(), 1);
    assert_eq!(ft.release(table_frame(D1, 0), D1), Err(Errno::EBUSY));
    for ty in [
        PageType::L1,
        PageType::L2,
        PageType::L3,
        PageType::L4,
        PageType::Segment,
    ] {
        assert_eq!(
            ft.get_page_and_type(&mut mem, table_frame(D1, 0), ty, D1),
            Err(Errno::EINVAL),
            "{ty:?}"
        );
    }
    assert_eq!(count(&ft, table_frame(D1, 0)), (2, 1));
    assert_eq!(w.t(D1).nr_entries(), 512);
    assert_eq!(w.t(D0).nr_entries(), 0);
    audit(&ft, &mem, &w);
}

// ------------------------------------------------------------ setup_table

#[test]
fn grant_setup_table_grows_and_reports() {
    world!(ft, mem, w);
    let mut next = Some(table_frame(D1, 1));
    let got = setup_table(&mut w, &ft, &mut mem, D1, &setup_op(D1, 2), false, || {
        next.take()
    })
    .unwrap();
    assert_eq!(got.as_slice(), &[table_frame(D1, 0), table_frame(D1, 1)]);
    assert_eq!(w.t(D1).nr_entries(), 1024);
    // Asking for fewer reports a prefix; the table never shrinks.
    let got = setup_table(
        &mut w,
        &ft,
        &mut mem,
        D1,
        &setup_op(DOMID_SELF, 1),
        false,
        || None,
    )
    .unwrap();
    assert_eq!(got.as_slice(), &[table_frame(D1, 0)]);
    let got = setup_table(
        &mut w,
        &ft,
        &mut mem,
        D1,
        &setup_op(DOMID_SELF, 0),
        false,
        || None,
    )
    .unwrap();
    assert!(got.as_slice().is_empty());
    assert_eq!(w.t(D1).nr_frames(), 2);
    audit(&ft, &mem, &w);
}

#[test]
fn grant_setup_table_errors() {
    world!(ft, mem, w);
    let mut never = || -> Option<u64> { panic!("no allocation expected") };
    let over = setup_op(DOMID_SELF, MAX_GRANT_FRAMES + 1);
    assert_eq!(
        setup_table(&mut w, &ft, &mut mem, D1, &over, false, &mut never),
        Err(GNTST_GENERAL_ERROR)
    );
    let huge = setup_op(DOMID_SELF, u32::MAX);
    assert_eq!(
        setup_table(&mut w, &ft, &mut mem, D1, &huge, false, &mut never),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(
        setup_table(&mut w, &ft, &mut mem, D1, &setup_op(9, 1), true, &mut never),
        Err(GNTST_BAD_DOMAIN)
    );
    assert_eq!(
        setup_table(
            &mut w,
            &ft,
            &mut mem,
            D1,
            &setup_op(DOMID_IO, 1),
            true,
            &mut never
        ),
        Err(GNTST_BAD_DOMAIN)
    );
    assert_eq!(
        setup_table(
            &mut w,
            &ft,
            &mut mem,
            D1,
            &setup_op(D2, 1),
            false,
            &mut never
        ),
        Err(GNTST_PERMISSION_DENIED)
    );
    // Privileged: another domain's table.
    let got = setup_table(
        &mut w,
        &ft,
        &mut mem,
        D0,
        &setup_op(D2, 1),
        true,
        &mut never,
    )
    .unwrap();
    assert_eq!(got.as_slice(), &[table_frame(D2, 0)]);
    // Allocation failure: general error, nothing added.
    assert_eq!(
        setup_table(&mut w, &ft, &mut mem, D1, &setup_op(D1, 2), false, || None),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(w.t(D1).nr_frames(), 1);
    // A frame the domain does not own is refused and not recorded.
    let mut foreign = Some(data(D2, 0));
    assert_eq!(
        setup_table(&mut w, &ft, &mut mem, D1, &setup_op(D1, 2), false, || {
            foreign.take()
        }),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(w.t(D1).nr_frames(), 1);
    // So is a frame the table already has.
    let mut again = Some(table_frame(D1, 0));
    assert_eq!(
        setup_table(&mut w, &ft, &mut mem, D1, &setup_op(D1, 2), false, || again
            .take()),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(w.t(D1).nr_frames(), 1);
    // Partial growth is kept: frame 1 arrives, frame 2 does not.
    let mut one = Some(table_frame(D1, 1));
    assert_eq!(
        setup_table(&mut w, &ft, &mut mem, D1, &setup_op(D1, 3), false, || one
            .take()),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(w.t(D1).frames(), &[table_frame(D1, 0), table_frame(D1, 1)]);
    audit(&ft, &mem, &w);
}

/// The active records grow with the table, a frame at a time (Xen's
/// `gnttab_grow_table`): when they cannot be allocated (either of the
/// frame's two allocations), `setup_table` answers `GNTST_general_error`,
/// the frame's reference is given back and the table keeps its size; with
/// memory the same call grows it.
#[test]
fn grant_setup_table_growth_without_memory() {
    use crate::fallible::inject;
    world!(ft, mem, w);
    let frame = table_frame(D1, 1);
    let before = count(&ft, frame);
    for nth in 0..2 {
        inject::fail_nth(Some(nth));
        let mut next = Some(frame);
        assert_eq!(
            setup_table(&mut w, &ft, &mut mem, D1, &setup_op(D1, 2), false, || next
                .take()),
            Err(GNTST_GENERAL_ERROR),
            "allocation {nth} failing"
        );
        assert!(!inject::pending());
        assert_eq!(w.t(D1).nr_frames(), 1);
        assert_eq!(w.t(D1).nr_entries(), 512);
        assert_eq!(
            count(&ft, frame),
            before,
            "the frame's reference given back"
        );
        assert_eq!(w.t(D1).pins(512), None);
        audit(&ft, &mem, &w);
    }
    let mut next = Some(frame);
    let got = setup_table(&mut w, &ft, &mut mem, D1, &setup_op(D1, 2), false, || {
        next.take()
    })
    .unwrap();
    assert_eq!(got.as_slice(), &[table_frame(D1, 0), frame]);
    assert_eq!(w.t(D1).nr_entries(), 1024);
    assert_eq!(w.t(D1).pins(1023).map(|p| p.readonly), Some(0));
    audit(&ft, &mem, &w);
}

// ------------------------------------------------- query_size and versions

#[test]
fn grant_query_size_and_versions() {
    world!(ft, mem, w);
    let s = query_size(&mut w, D1, DOMID_SELF, false).unwrap();
    assert_eq!(
        s,
        TableSize {
            nr_frames: 1,
            max_nr_frames: MAX_GRANT_FRAMES
        }
    );
    assert_eq!(query_size(&mut w, D0, D0, false).unwrap().nr_frames, 0);
    assert_eq!(
        query_size(&mut w, D1, D2, false),
        Err(GNTST_PERMISSION_DENIED)
    );
    assert_eq!(query_size(&mut w, D0, D2, true).unwrap().nr_frames, 1);
    assert_eq!(query_size(&mut w, D1, 9, true), Err(GNTST_BAD_DOMAIN));
    assert_eq!(
        query_size(&mut w, D1, DOMID_IO, true),
        Err(GNTST_BAD_DOMAIN)
    );

    assert_eq!(get_version(&mut w, D1, DOMID_SELF, false), Ok(1));
    assert_eq!(get_version(&mut w, D1, D1, false), Ok(1));
    assert_eq!(get_version(&mut w, D1, D2, false), Err(Errno::EPERM));
    assert_eq!(get_version(&mut w, D0, D2, true), Ok(1));
    assert_eq!(get_version(&mut w, D1, 9, true), Err(Errno::ESRCH));

    audit(&ft, &mem, &w);
}

// ------------------------------------------------------------ map

#[test]
fn grant_map_writable_pins_and_references() {
    world!(ft, mem, w);
    let frame = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, frame);
    let mut op = map_op(D1, 8, HOST, VA);
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install).unwrap();
    assert_eq!(
        m,
        Mapping {
            handle: 0,
            granter: D1,
            gref: 8,
            mfn: frame,
            host_addr: VA,
            flags: HOST
        }
    );
    m.write_to(&mut op);
    // A host mapping alone reports no bus address.
    assert_eq!((op.status, op.handle, op.dev_bus_addr), (GNTST_OKAY, 0, 0));
    use guest_abi::arch::pte::{ACCESSED, DIRTY, GUEST_KERNEL, NX, PRESENT, RW, USER};
    let want =
        (frame << 12) | PRESENT | RW | USER | ACCESSED | DIRTY | NX | GUEST_KERNEL | GRANT_PTE_TAG;
    assert_eq!(mem.ptes[&VA], want);
    assert_eq!(
        flags_of(&mem, &w, D1, 8),
        PERMIT | GTF_READING | GTF_WRITING
    );
    assert_eq!(count(&ft, frame), (2, 1));
    assert_eq!(ft.info(frame).unwrap().page_type(), PageType::Writable);
    assert_eq!(
        w.t(D1).pins(8).unwrap(),
        Pins {
            grantee: D2,
            mfn: frame,
            readonly: 0,
            writable: 1
        }
    );
    assert_eq!(w.t(D2).nr_mappings(), 1);
    assert_eq!(w.t(D2).mapping(0), Some(m));
    audit(&ft, &mem, &w);
    // The granter cannot take the frame back or turn it into a page table.
    assert_eq!(ft.release(frame, D1), Err(Errno::EBUSY));
    assert_eq!(ft.pin(&mut mem, D1, frame, 1), Err(Errno::EINVAL));
    audit(&ft, &mem, &w);
}

#[test]
fn grant_map_readonly_and_application() {
    world!(ft, mem, w);
    let frame = data(D1, 1);
    grant(&mut mem, &w, D1, 9, PERMIT | GTF_READONLY, D2, frame);
    // A writable mapping of a read-only grant is refused, entry untouched.
    assert_eq!(
        map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 9, HOST, VA), install),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(flags_of(&mem, &w, D1, 9), PERMIT | GTF_READONLY);
    let op = map_op(D1, 9, HOST | RO | GNTMAP_APPLICATION_MAP, VA);
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install).unwrap();
    assert!(m.readonly());
    assert_eq!(m.external_ref(), ExternalRef::Page);
    let pte = mem.ptes[&VA];
    assert_eq!(pte & guest_abi::arch::pte::RW, 0);
    assert_eq!(pte & guest_abi::arch::pte::GUEST_KERNEL, 0);
    assert_ne!(pte & guest_abi::arch::pte::USER, 0);
    assert_eq!(
        flags_of(&mem, &w, D1, 9),
        PERMIT | GTF_READONLY | GTF_READING
    );
    assert_eq!(count(&ft, frame), (2, 0));
    // A read-only mapping does not stop the granter from using the frame as
    // a page table; a later writable use of the grant is then refused.
    ft.pin(&mut mem, D1, frame, 1).unwrap();
    audit(&ft, &mem, &w);
}

/// `XENFEAT_gnttab_map_avail_bits`: map flags 16-18 become the entry's
/// available bits 9-11 (higher flag bits have no room and are dropped, as
/// Xen's `MASK_INSR` into `_PAGE_AVAIL`), the mapping remembers them, and
/// unmapping finds the entry it installed.
#[test]
fn grant_map_guest_avail_bits() {
    world!(ft, mem, w);
    let frame = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, frame);
    let avail = 5 << guest_abi::grant_table::GNTMAP_GUEST_AVAIL0;
    let high = 1 << 20;
    let op = map_op(D1, 8, HOST | avail | high, VA);
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install).unwrap();
    use guest_abi::arch::pte::{ACCESSED, DIRTY, GUEST_KERNEL, NX, PRESENT, RW, USER};
    let pte = mem.ptes[&VA];
    let plain =
        (frame << 12) | PRESENT | RW | USER | ACCESSED | DIRTY | NX | GUEST_KERNEL | GRANT_PTE_TAG;
    assert_eq!(pte, plain | 5 << 9);
    assert_eq!(w.t(D2).mapping(m.handle).map(|x| x.pte()), Some(pte));
    audit(&ft, &mem, &w);
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(m.handle, VA), remove),
        Ok(Flush::NEEDED)
    );
    assert!(mem.ptes.is_empty());
    audit(&ft, &mem, &w);
}

#[test]
fn grant_map_request_errors() {
    world!(ft, mem, w);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, data(D1, 0));
    let cases: &[(GnttabMapGrantRef, i16)] = &[
        (map_op(D1, 8, 0, VA), GNTST_BAD_GNTREF),
        (map_op(D1, 8, RO, VA), GNTST_BAD_GNTREF),
        // Map looks the granter up by id: DOMID_SELF is not one.
        (map_op(DOMID_SELF, 8, HOST, VA), GNTST_BAD_DOMAIN),
        (map_op(DOMID_IO, 8, HOST, VA), GNTST_BAD_DOMAIN),
        (map_op(9, 8, HOST, VA), GNTST_BAD_DOMAIN),
        (map_op(u16::MAX, 8, HOST, VA), GNTST_BAD_DOMAIN),
        (map_op(D1, 512, HOST, VA), GNTST_BAD_GNTREF),
        (map_op(D1, u32::MAX, HOST, VA), GNTST_BAD_GNTREF),
        // D0 has no table frames at all.
        (map_op(D0, 0, HOST, VA), GNTST_BAD_GNTREF),
        // A PTE address off an entry boundary (XSA-227). (A virtual
        // address off a page boundary maps that page, as on Xen.)
        (map_op(D1, 8, HOST | PTE, VA + 4), GNTST_GENERAL_ERROR),
        (map_op(D1, 8, HOST | PTE | RO, VA + 1), GNTST_GENERAL_ERROR),
    ];
    for (op, want) in cases {
        assert_eq!(
            map_grant_ref(&mut w, &ft, &mut mem, D2, op, install),
            Err(*want),
            "{op:?}"
        );
        assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT, "{op:?}");
        assert_eq!(w.t(D1).pins(8).unwrap().readonly, 0);
        assert_eq!(w.t(D1).pins(8).unwrap().writable, 0);
        assert_eq!(w.t(D2).nr_mappings(), 0);
        assert_eq!(count(&ft, data(D1, 0)), (1, 0));
        audit(&ft, &mem, &w);
    }
    assert!(mem.ptes.is_empty());
    // An 8-byte aligned PTE address is fine with contains_pte.
    let m = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | PTE, VA + 8),
        install,
    )
    .unwrap();
    assert!(m.contains_pte());
    audit(&ft, &mem, &w);
}

#[test]
fn grant_map_entry_errors() {
    world!(ft, mem, w);
    let f = data(D1, 0);
    let cases: &[(u16, u16, u64, u32, i16)] = &[
        // (flags, domid, frame, map flags, status)
        (0, D2, f, HOST, GNTST_GENERAL_ERROR),
        (PERMIT, D3, f, HOST, GNTST_GENERAL_ERROR),
        (PERMIT, D1, f, HOST, GNTST_GENERAL_ERROR),
        (GTF_ACCEPT_TRANSFER, D2, f, HOST, GNTST_GENERAL_ERROR),
        (GTF_TRANSITIVE, D2, f, HOST, GNTST_GENERAL_ERROR),
        (PERMIT | GTF_SUB_PAGE, D2, f, HOST | RO, GNTST_GENERAL_ERROR),
        (PERMIT | GTF_READONLY, D2, f, HOST, GNTST_GENERAL_ERROR),
        // The frame must be a live frame of the granter.
        (PERMIT, D2, data(D2, 0), HOST, GNTST_BAD_PAGE),
        (PERMIT, D2, data(D2, 0), HOST | RO, GNTST_BAD_PAGE),
        (PERMIT, D2, 0, HOST, GNTST_BAD_PAGE),
        (PERMIT, D2, 63, HOST, GNTST_BAD_PAGE),
        (PERMIT, D2, 1000, HOST | RO, GNTST_BAD_PAGE),
        (PERMIT, D2, u64::from(u32::MAX), HOST, GNTST_BAD_PAGE),
    ];
    for &(flags, domid, frame, map_flags, want) in cases {
        grant(&mut mem, &w, D1, 8, flags, domid, frame);
        let op = map_op(D1, 8, map_flags, VA);
        assert_eq!(
            map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install),
            Err(want),
            "{flags:#x} {domid} {frame}"
        );
        // Whatever the hypervisor set is cleared again.
        assert_eq!(flags_of(&mem, &w, D1, 8), flags, "{flags:#x} {frame}");
        assert_eq!(w.t(D2).nr_mappings(), 0);
        audit(&ft, &mem, &w);
    }
    assert!(mem.ptes.is_empty());
}

#[test]
fn grant_map_of_page_table_frame() {
    world!(ft, mem, w);
    let f = data(D1, 2);
    ft.pin(&mut mem, D1, f, 1).unwrap();
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f);
    assert_eq!(
        map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    assert_eq!(count(&ft, f), (2, 1));
    audit(&ft, &mem, &w);
    // Read-only is fine.
    map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | RO, VA),
        install,
    )
    .unwrap();
    // Adding a writable mapping later still fails, and keeps GTF_reading.
    assert_eq!(
        map_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &map_op(D1, 8, HOST, VA + 0x1000),
            install
        ),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT | GTF_READING);
    assert_eq!(w.t(D1).pins(8).unwrap().readonly, 1);
    audit(&ft, &mem, &w);
}

#[test]
fn grant_map_install_failure_undoes_everything() {
    world!(ft, mem, w);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, data(D1, 0));
    let op = map_op(D1, 8, HOST, VA);
    assert_eq!(
        map_grant_ref(&mut w, &ft, &mut mem, D2, &op, |_, _, _| false),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    assert_eq!(count(&ft, data(D1, 0)), (1, 0));
    assert_eq!(w.t(D2).nr_mappings(), 0);
    assert_eq!(w.t(D2).mapping(0), None);
    audit(&ft, &mem, &w);
    // A second mapping at an occupied address fails in the installer only.
    map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install).unwrap();
    assert_eq!(
        map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(w.t(D1).pins(8).unwrap().writable, 1);
    assert_eq!(count(&ft, data(D1, 0)), (2, 1));
    audit(&ft, &mem, &w);
}

#[test]
fn grant_map_pinned_by_another_grantee() {
    world!(ft, mem, w);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, data(D1, 0));
    map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install).unwrap();
    // The granter re-points the entry at D3 while it is mapped: the active
    // grantee still wins.
    grant(
        &mut mem,
        &w,
        D1,
        8,
        PERMIT | GTF_READING | GTF_WRITING,
        D3,
        data(D1, 0),
    );
    assert_eq!(
        map_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D3,
            &map_op(D1, 8, HOST | RO, VA),
            install
        ),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(w.t(D1).pins(8).unwrap().grantee, D2);
    audit(&ft, &mem, &w);
}

#[test]
fn grant_map_pin_limit() {
    world!(ft, mem, w);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, data(D1, 0));
    for i in 0..128u64 {
        let op = map_op(D1, 8, HOST | RO, VA + i * 0x1000);
        map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install).unwrap();
    }
    let more = VA + 200 * 0x1000;
    for flags in [HOST | RO, HOST] {
        assert_eq!(
            map_grant_ref(
                &mut w,
                &ft,
                &mut mem,
                D2,
                &map_op(D1, 8, flags, more),
                install
            ),
            Err(GNTST_GENERAL_ERROR)
        );
    }
    assert_eq!(w.t(D1).pins(8).unwrap().readonly, 128);
    assert_eq!(count(&ft, data(D1, 0)), (129, 0));
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT | GTF_READING);
    audit(&ft, &mem, &w);
}

#[test]
fn grant_map_maptrack_full() {
    world!(ft, mem, w);
    for gref in 8..16u32 {
        grant(
            &mut mem,
            &w,
            D1,
            gref,
            PERMIT,
            D2,
            data(D1, u64::from(gref)),
        );
    }
    for i in 0..MAPTRACK_ENTRIES {
        let gref = 8 + i % 8;
        let op = map_op(D1, gref, HOST | RO, VA + u64::from(i) * 0x1000);
        let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install).unwrap();
        assert_eq!(m.handle, i);
        // The maptrack grows with the mappings, a step at a time.
        let slots = w.get(D2).unwrap().maptrack_slots();
        assert_eq!(slots, (i as usize / MAPTRACK_GROW + 1) * MAPTRACK_GROW);
    }
    let last = VA + 0x1000_0000;
    assert_eq!(
        map_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &map_op(D1, 8, HOST | RO, last),
            install
        ),
        Err(GNTST_NO_SPACE)
    );
    // Bad domain is checked before the maptrack, bad ref after.
    assert_eq!(
        map_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &map_op(9, 8, HOST, last),
            install
        ),
        Err(GNTST_BAD_DOMAIN)
    );
    assert_eq!(
        map_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &map_op(D1, 9999, HOST, last),
            install
        ),
        Err(GNTST_NO_SPACE)
    );
    audit(&ft, &mem, &w);
    // Freeing handle 500 (a mapping of reference 12) makes it the next one
    // handed out.
    let m = w.t(D2).mapping(500).unwrap();
    assert_eq!(m.gref, 12);
    assert_eq!(
        unmap_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &unmap_op(500, m.host_addr),
            remove
        ),
        Ok(Flush::NEEDED)
    );
    let again = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 12, HOST | RO, last),
        install,
    )
    .unwrap();
    assert_eq!(again.handle, 500);
    audit(&ft, &mem, &w);
}

#[test]
fn grant_map_races_with_the_granter() {
    world!(ft, mem, w);
    let f = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f);
    // Four harmless concurrent changes (the granter toggles a cache bit):
    // the fifth attempt wins.
    for i in 0..4 {
        let flags = if i % 2 == 0 { PERMIT | GTF_PCD } else { PERMIT };
        mem.races.push_back((flags, D2));
    }
    mem.cmpxchgs = 0;
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install).unwrap();
    assert_eq!(mem.cmpxchgs, 5);
    assert_eq!(
        flags_of(&mem, &w, D1, 8),
        PERMIT | GTF_READING | GTF_WRITING
    );
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(m.handle, VA), remove),
        Ok(Flush::NEEDED)
    );
    // Five lost races: the entry is unstable.
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f);
    for i in 0..5 {
        let flags = if i % 2 == 0 { PERMIT | GTF_PCD } else { PERMIT };
        mem.races.push_back((flags, D2));
    }
    assert_eq!(
        map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install),
        Err(GNTST_GENERAL_ERROR)
    );
    assert!(mem.races.is_empty());
    // The granter revokes, re-targets, or makes it read-only mid-way.
    for (race, map_flags) in [
        ((0, D2), HOST | RO),
        ((PERMIT, D3), HOST | RO),
        ((PERMIT | GTF_READONLY, D2), HOST),
    ] {
        grant(&mut mem, &w, D1, 8, PERMIT | GTF_PCD, D2, f);
        mem.races.push_back(race);
        assert_eq!(
            map_grant_ref(
                &mut w,
                &ft,
                &mut mem,
                D2,
                &map_op(D1, 8, map_flags, VA),
                install
            ),
            Err(GNTST_GENERAL_ERROR)
        );
        assert_eq!(flags_of(&mem, &w, D1, 8) & (GTF_READING | GTF_WRITING), 0);
    }
    assert_eq!(count(&ft, f), (1, 0));
    audit(&ft, &mem, &w);
}

#[test]
fn grant_self_map() {
    world!(ft, mem, w);
    grant(&mut mem, &w, D1, 8, PERMIT, D1, data(D1, 0));
    let m = map_grant_ref(&mut w, &ft, &mut mem, D1, &map_op(D1, 8, HOST, VA), install).unwrap();
    assert_eq!(m.granter, D1);
    audit(&ft, &mem, &w);
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D1, &unmap_op(m.handle, VA), remove),
        Ok(Flush::NEEDED)
    );
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    audit(&ft, &mem, &w);
}

// ------------------------------------------------------------ unmap

#[test]
fn grant_unmap_drops_exactly_what_map_took() {
    world!(ft, mem, w);
    let f = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f);
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install).unwrap();
    let flush = unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(m.handle, VA), remove);
    assert_eq!(flush, Ok(Flush::NEEDED));
    assert!(mem.ptes.is_empty());
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    assert_eq!(count(&ft, f), (1, 0));
    assert_eq!(w.t(D2).nr_mappings(), 0);
    audit(&ft, &mem, &w);
    // Double unmap: bad handle, no count moves (XSA-224).
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(m.handle, VA), remove),
        Err(GNTST_BAD_HANDLE)
    );
    assert_eq!(count(&ft, f), (1, 0));
    audit(&ft, &mem, &w);
    // Now the granter can reuse the frame.
    ft.pin(&mut mem, D1, f, 1).unwrap();
    ft.unpin(&mut mem, D1, f).unwrap();
    ft.release(f, D1).unwrap();
    audit(&ft, &mem, &w);
}

#[test]
fn grant_unmap_errors_change_nothing() {
    world!(ft, mem, w);
    let f = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f);
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install).unwrap();
    let dev = f << 12;
    let cases: &[(GnttabUnmapGrantRef, i16)] = &[
        (unmap_op(1, VA), GNTST_BAD_HANDLE),
        (unmap_op(MAPTRACK_ENTRIES, VA), GNTST_BAD_HANDLE),
        (unmap_op(u32::MAX, VA), GNTST_BAD_HANDLE),
        (unmap_op(0, VA + 0x1000), GNTST_GENERAL_ERROR),
        (
            GnttabUnmapGrantRef {
                dev_bus_addr: dev + 0x1000,
                ..unmap_op(0, VA)
            },
            GNTST_BAD_DEV_ADDR,
        ),
    ];
    for (op, want) in cases {
        assert_eq!(
            unmap_grant_ref(&mut w, &ft, &mut mem, D2, op, remove),
            Err(*want),
            "{op:?}"
        );
        // Another domain cannot unmap D2's handle either.
        assert_eq!(
            unmap_grant_ref(&mut w, &ft, &mut mem, D3, op, remove),
            Err(GNTST_BAD_HANDLE)
        );
        assert_eq!(w.t(D2).mapping(0), Some(m));
        assert_eq!(count(&ft, f), (2, 1));
        assert_eq!(
            flags_of(&mem, &w, D1, 8),
            PERMIT | GTF_READING | GTF_WRITING
        );
        audit(&ft, &mem, &w);
    }
    // host_addr 0 removes nothing and succeeds (as in Xen), mapping kept.
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(0, 0), remove),
        Ok(Flush::NONE)
    );
    assert_eq!(w.t(D2).mapping(0), Some(m));
    // The entry was changed under us (made read-only): the remover refuses
    // (XSA-234), nothing changes.
    let ro = m.pte() & !guest_abi::arch::pte::RW;
    mem.ptes.insert(VA, ro);
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(0, VA), remove),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(count(&ft, f), (2, 1));
    mem.ptes.insert(VA, m.pte());
    // The right dev_bus_addr is accepted.
    let op = GnttabUnmapGrantRef {
        dev_bus_addr: dev,
        ..unmap_op(0, VA)
    };
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &op, remove),
        Ok(Flush::NEEDED)
    );
    assert_eq!(count(&ft, f), (1, 0));
    audit(&ft, &mem, &w);
}

#[test]
fn grant_unmap_last_of_each_kind_clears_its_flag() {
    world!(ft, mem, w);
    let f = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f);
    let rw = map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install).unwrap();
    let ro = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | RO, VA + 0x1000),
        install,
    )
    .unwrap();
    let rw2 = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST, VA + 0x2000),
        install,
    )
    .unwrap();
    assert_eq!(count(&ft, f), (4, 2));
    audit(&ft, &mem, &w);
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(rw.handle, VA), remove),
        Ok(Flush::NEEDED)
    );
    assert_eq!(
        flags_of(&mem, &w, D1, 8),
        PERMIT | GTF_READING | GTF_WRITING
    );
    assert_eq!(
        unmap_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &unmap_op(rw2.handle, VA + 0x2000),
            remove
        ),
        Ok(Flush::NEEDED)
    );
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT | GTF_READING);
    assert_eq!(count(&ft, f), (2, 0));
    audit(&ft, &mem, &w);
    assert_eq!(
        unmap_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &unmap_op(ro.handle, VA + 0x1000),
            remove
        ),
        Ok(Flush::NEEDED)
    );
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    assert_eq!(count(&ft, f), (1, 0));
    audit(&ft, &mem, &w);
}

// ------------------------------------------------------------ revocation

/// Linux's `gnttab_end_foreign_access_ref` (v1): clear the entry with a
/// compare-and-exchange, refusing while the hypervisor marks it in use.
fn guest_end_access(mem: &mut Mem, w: &World, g: u16, gref: u32) -> bool {
    let (tf, slot) = w.t(g).locate_v1(gref).unwrap();
    loop {
        let e = mem.read_entry(tf, slot);
        if e.flags & (GTF_READING | GTF_WRITING) != 0 {
            return false;
        }
        let old = entry_header(e.flags, e.domid);
        let o = slot * 8;
        let cur = u32::from_le_bytes(mem.frames[tf as usize][o..o + 4].try_into().unwrap());
        if cur == old {
            mem.write_header(tf, slot, entry_header(0, e.domid));
            return true;
        }
    }
}

#[test]
fn grant_revocation_while_mapped_cannot_take_the_frame() {
    world!(ft, mem, w);
    let f = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f);
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install).unwrap();
    // A well-behaved granter's revocation fails while in use.
    assert!(!guest_end_access(&mut mem, &w, D1, 8));
    assert_eq!(
        flags_of(&mem, &w, D1, 8),
        PERMIT | GTF_READING | GTF_WRITING
    );
    // A hostile granter overwrites the entry anyway (including the
    // hypervisor's bits) and re-points it at another frame.
    grant(&mut mem, &w, D1, 8, 0, D3, data(D1, 5));
    // It cannot take the frame back: freeing or retyping it fails.
    assert_eq!(ft.release(f, D1), Err(Errno::EBUSY));
    assert_eq!(ft.pin(&mut mem, D1, f, 1), Err(Errno::EINVAL));
    assert_eq!(
        ft.get_page_type(&mut mem, f, PageType::L1, D1),
        Err(Errno::EINVAL)
    );
    audit(&ft, &mem, &w);
    // The grantee keeps its mapping; a further mapping by the active
    // grantee uses the pinned frame, not the new one.
    let m2 = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | RO, VA + 0x1000),
        install,
    )
    .unwrap();
    assert_eq!(m2.mfn, f);
    assert_eq!(count(&ft, data(D1, 5)), (1, 0));
    audit(&ft, &mem, &w);
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(m.handle, VA), remove),
        Ok(Flush::NEEDED)
    );
    assert_eq!(
        unmap_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &unmap_op(m2.handle, VA + 0x1000),
            remove
        ),
        Ok(Flush::NEEDED)
    );
    assert_eq!(count(&ft, f), (1, 0));
    ft.release(f, D1).unwrap();
    // Once unpinned, the (now invalid) entry is checked again.
    assert_eq!(
        map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install),
        Err(GNTST_GENERAL_ERROR)
    );
    audit(&ft, &mem, &w);
}

#[test]
fn grant_revocation_after_unmap_succeeds() {
    world!(ft, mem, w);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, data(D1, 0));
    let m = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | RO, VA),
        install,
    )
    .unwrap();
    assert!(!guest_end_access(&mut mem, &w, D1, 8));
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(m.handle, VA), remove),
        Ok(Flush::NEEDED)
    );
    assert!(guest_end_access(&mut mem, &w, D1, 8));
    assert_eq!(flags_of(&mem, &w, D1, 8), 0);
    audit(&ft, &mem, &w);
}

// ------------------------------------------------------------ copy

fn copy_ptr(u: u64, domid: u16, offset: u16) -> GnttabCopyPtr {
    GnttabCopyPtr {
        u,
        domid,
        offset,
        _pad: 0,
    }
}

fn copy_op(source: GnttabCopyPtr, dest: GnttabCopyPtr, len: u16, flags: u16) -> GnttabCopy {
    GnttabCopy {
        source,
        dest,
        len,
        flags,
        ..Default::default()
    }
}

#[test]
fn grant_copy_between_frames_and_grants() {
    world!(ft, mem, w);
    let src = data(D2, 0);
    let dst = data(D1, 0);
    mem.frames[src as usize][100..110].copy_from_slice(b"0123456789");
    grant(&mut mem, &w, D1, 8, PERMIT, D2, dst);
    // D2 copies from its own frame into D1's grant.
    let op = copy_op(
        copy_ptr(src, DOMID_SELF, 100),
        copy_ptr(8, D1, 4000),
        10,
        GNTCOPY_DEST_GREF,
    );
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &op), Ok(()));
    assert_eq!(&mem.frames[dst as usize][4000..4010], b"0123456789");
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    assert_eq!(count(&ft, dst), (1, 0));
    assert_eq!(count(&ft, src), (1, 0));
    audit(&ft, &mem, &w);
    // And back, from a read-only grant, into its own frame.
    grant(&mut mem, &w, D1, 9, PERMIT | GTF_READONLY, D2, dst);
    let op = copy_op(
        copy_ptr(9, D1, 4000),
        copy_ptr(src, DOMID_SELF, 0),
        10,
        GNTCOPY_SOURCE_GREF,
    );
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &op), Ok(()));
    assert_eq!(&mem.frames[src as usize][0..10], b"0123456789");
    // Grant to grant, the whole page; a grant reference in `u` keeps only
    // its low 32 bits.
    grant(&mut mem, &w, D3, 10, PERMIT, D2, data(D3, 0));
    let op = copy_op(
        copy_ptr(9 | (1 << 40), D1, 0),
        copy_ptr(10, D3, 0),
        4096,
        GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF,
    );
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &op), Ok(()));
    assert_eq!(&mem.frames[data(D3, 0) as usize][4000..4010], b"0123456789");
    // Empty copies at the very end of a page are fine.
    let op = copy_op(
        copy_ptr(src, DOMID_SELF, 4096),
        copy_ptr(src, DOMID_SELF, 4096),
        0,
        0,
    );
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &op), Ok(()));
    for g in [8, 9] {
        assert_eq!(flags_of(&mem, &w, D1, g) & (GTF_READING | GTF_WRITING), 0);
    }
    assert_eq!(flags_of(&mem, &w, D3, 10), PERMIT);
    audit(&ft, &mem, &w);
}

#[test]
fn grant_copy_errors() {
    world!(ft, mem, w);
    let own = data(D2, 0);
    let pt = data(D2, 1);
    ft.pin(&mut mem, D2, pt, 1).unwrap();
    grant(&mut mem, &w, D1, 8, PERMIT, D2, data(D1, 0));
    grant(&mut mem, &w, D1, 9, PERMIT | GTF_READONLY, D2, data(D1, 1));
    grant(&mut mem, &w, D1, 10, PERMIT, D3, data(D1, 2));
    grant(&mut mem, &w, D1, 11, PERMIT, D2, data(D3, 0));
    let me = |off| copy_ptr(own, DOMID_SELF, off);
    let g = |r, off| copy_ptr(r, D1, off);
    let (sg, dg) = (GNTCOPY_SOURCE_GREF, GNTCOPY_DEST_GREF);
    let cases: &[(GnttabCopy, i16)] = &[
        // Frames only by DOMID_SELF, even naming oneself.
        (
            copy_op(copy_ptr(own, D2, 0), me(0), 1, 0),
            GNTST_PERMISSION_DENIED,
        ),
        (
            copy_op(me(0), copy_ptr(own, D2, 0), 1, 0),
            GNTST_PERMISSION_DENIED,
        ),
        (copy_op(copy_ptr(8, 9, 0), me(0), 1, sg), GNTST_BAD_DOMAIN),
        (
            copy_op(me(0), copy_ptr(8, DOMID_IO, 0), 1, dg),
            GNTST_BAD_DOMAIN,
        ),
        // Domains are checked before either side is claimed.
        (
            copy_op(g(999, 0), copy_ptr(8, 9, 0), 1, sg | dg),
            GNTST_BAD_DOMAIN,
        ),
        (copy_op(g(512, 0), me(0), 1, sg), GNTST_BAD_GNTREF),
        (
            copy_op(me(0), g(u64::from(u32::MAX), 0), 1, dg),
            GNTST_BAD_GNTREF,
        ),
        // Bad references win over bad lengths (claimed first).
        (copy_op(g(512, 0), me(0), 4097, sg), GNTST_BAD_GNTREF),
        (copy_op(me(0), g(9, 0), 1, dg), GNTST_GENERAL_ERROR),
        (copy_op(g(10, 0), me(0), 1, sg), GNTST_GENERAL_ERROR),
        (copy_op(g(11, 0), me(0), 1, sg), GNTST_BAD_PAGE),
        (
            copy_op(copy_ptr(data(D1, 0), DOMID_SELF, 0), me(0), 1, 0),
            GNTST_BAD_PAGE,
        ),
        (
            copy_op(me(0), copy_ptr(1000, DOMID_SELF, 0), 1, 0),
            GNTST_BAD_PAGE,
        ),
        (
            copy_op(me(0), copy_ptr(u64::MAX, DOMID_SELF, 0), 1, 0),
            GNTST_BAD_PAGE,
        ),
        (
            copy_op(me(0), copy_ptr(pt, DOMID_SELF, 0), 1, 0),
            GNTST_GENERAL_ERROR,
        ),
        (
            copy_op(me(0), copy_ptr(table_frame(D1, 0), DOMID_SELF, 0), 1, 0),
            GNTST_BAD_PAGE,
        ),
        // Bounds.
        (copy_op(me(4000), g(8, 0), 100, dg), GNTST_BAD_COPY_ARG),
        (copy_op(me(0), g(8, 4095), 2, dg), GNTST_BAD_COPY_ARG),
        (copy_op(me(0), me(0), 4097, 0), GNTST_BAD_COPY_ARG),
        (
            copy_op(me(u16::MAX), me(u16::MAX), u16::MAX, 0),
            GNTST_BAD_COPY_ARG,
        ),
        (copy_op(g(9, 4096), g(8, 0), 1, sg | dg), GNTST_BAD_COPY_ARG),
    ];
    let before: Vec<u16> = (8..12).map(|r| flags_of(&mem, &w, D1, r)).collect();
    let frames = mem.frames.clone();
    for (op, want) in cases {
        assert_eq!(copy(&mut w, &ft, &mut mem, D2, op), Err(*want), "{op:?}");
        let now: Vec<u16> = (8..12).map(|r| flags_of(&mem, &w, D1, r)).collect();
        assert_eq!(now, before, "{op:?}");
        assert!(mem.frames == frames, "{op:?} wrote memory");
        audit(&ft, &mem, &w);
    }
    assert_eq!(count(&ft, pt), (2, 1));
    assert_eq!(count(&ft, own), (1, 0));
}

#[test]
fn grant_copy_while_mapped() {
    world!(ft, mem, w);
    let f = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f);
    let m = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | RO, VA),
        install,
    )
    .unwrap();
    // D2 writes through copy: GTF_writing only for the copy's duration.
    let op = copy_op(
        copy_ptr(data(D2, 0), DOMID_SELF, 0),
        copy_ptr(8, D1, 0),
        16,
        GNTCOPY_DEST_GREF,
    );
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &op), Ok(()));
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT | GTF_READING);
    assert_eq!(w.t(D1).pins(8).unwrap().readonly, 1);
    assert_eq!(w.t(D1).pins(8).unwrap().writable, 0);
    // D3 may not use a grant pinned by D2 (nor name D2's frame as its own).
    assert_eq!(copy(&mut w, &ft, &mut mem, D3, &op), Err(GNTST_BAD_PAGE));
    let op3 = copy_op(
        copy_ptr(8, D1, 0),
        copy_ptr(data(D3, 0), DOMID_SELF, 0),
        16,
        GNTCOPY_SOURCE_GREF,
    );
    assert_eq!(
        copy(&mut w, &ft, &mut mem, D3, &op3),
        Err(GNTST_GENERAL_ERROR)
    );
    audit(&ft, &mem, &w);
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(m.handle, VA), remove),
        Ok(Flush::NEEDED)
    );
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    audit(&ft, &mem, &w);
}

// ------------------------------------------------------------ death

#[test]
fn grant_mapper_death_releases_its_mappings() {
    world!(ft, mem, w);
    let (f0, f1) = (data(D1, 0), data(D1, 1));
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f0);
    grant(&mut mem, &w, D1, 9, PERMIT, D2, f1);
    map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install).unwrap();
    map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 9, HOST | RO, VA + 0x1000),
        install,
    )
    .unwrap();
    assert_eq!(release_domain(&mut w, &ft, &mut mem, D2), 0);
    assert_eq!(w.t(D2).nr_mappings(), 0);
    assert!(w.t(D2).is_dying());
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    assert_eq!(flags_of(&mem, &w, D1, 9), PERMIT);
    assert_eq!((count(&ft, f0), count(&ft, f1)), ((1, 0), (1, 0)));
    audit(&ft, &mem, &w);
    // Twice is harmless (no second drop of the table frame).
    assert_eq!(release_domain(&mut w, &ft, &mut mem, D2), 0);
    audit(&ft, &mem, &w);
    let mut freed = Vec::new();
    assert_eq!(ft.relinquish_domain(&mut mem, D2, |m| freed.push(m)), 0);
    assert_eq!(freed.len(), 20);
    audit(&ft, &mem, &w);
    // A dead domain maps nothing and is granted nothing.
    assert_eq!(
        map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(
        map_grant_ref(&mut w, &ft, &mut mem, D1, &map_op(D2, 8, HOST, VA), install),
        Err(GNTST_BAD_DOMAIN)
    );
    assert_eq!(
        setup_table(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &setup_op(DOMID_SELF, 1),
            false,
            || { None }
        ),
        Err(GNTST_GENERAL_ERROR)
    );
}

#[test]
fn grant_granter_death_keeps_mapped_frames_until_unmapped() {
    world!(ft, mem, w);
    let f = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, f);
    grant(&mut mem, &w, D1, 9, PERMIT, D3, data(D1, 1));
    // D1 also maps one of D2's grants and one of its own.
    grant(&mut mem, &w, D2, 8, PERMIT, D1, data(D2, 0));
    grant(&mut mem, &w, D1, 10, PERMIT, D1, data(D1, 2));
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install).unwrap();
    map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D1,
        &map_op(D2, 8, HOST, VA + 0x1000),
        install,
    )
    .unwrap();
    map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D1,
        &map_op(D1, 10, HOST, VA + 0x2000),
        install,
    )
    .unwrap();
    audit(&ft, &mem, &w);

    assert_eq!(release_domain(&mut w, &ft, &mut mem, D1), 1);
    assert_eq!(flags_of(&mem, &w, D2, 8), PERMIT);
    audit(&ft, &mem, &w);
    let mut freed = Vec::new();
    assert_eq!(ft.relinquish_domain(&mut mem, D1, |m| freed.push(m)), 1);
    assert!(!freed.contains(&f));
    assert!(freed.contains(&table_frame(D1, 0)));
    assert!(ft.info(f).unwrap().is_dying());
    audit(&ft, &mem, &w);
    // The freed table frame gets reused: the policy must never touch it.
    mem.frames[table_frame(D1, 0) as usize].fill(0xFF);
    let canary = mem.frames[table_frame(D1, 0) as usize];

    // D2 keeps its mapping; nobody can make new use of D1's grants.
    assert_eq!(w.t(D2).mapping(m.handle), Some(m));
    assert_eq!(
        map_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &map_op(D1, 8, HOST | RO, VA + 0x1000),
            install
        ),
        Err(GNTST_BAD_DOMAIN)
    );
    let op = copy_op(
        copy_ptr(8, D1, 0),
        copy_ptr(data(D2, 0), DOMID_SELF, 0),
        1,
        GNTCOPY_SOURCE_GREF,
    );
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &op), Err(GNTST_BAD_DOMAIN));
    assert_eq!(w.t(D1).pinned_grants(), 1);

    // D2 unmaps: its references go, D1's dead table is left alone.
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(m.handle, VA), remove),
        Ok(Flush::NEEDED)
    );
    assert!(mem.frames[table_frame(D1, 0) as usize] == canary);
    assert_eq!(w.t(D1).pinned_grants(), 0);
    assert_eq!(w.t(D1).nr_mappings(), 0);
    audit(&ft, &mem, &w);
    let mut freed = Vec::new();
    assert_eq!(ft.relinquish_domain(&mut mem, D1, |m| freed.push(m)), 0);
    assert_eq!(freed, vec![f]);
    audit(&ft, &mem, &w);
}

#[test]
fn grant_external_refs_list() {
    world!(ft, mem, w);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, data(D1, 0));
    grant(&mut mem, &w, D1, 9, PERMIT | GTF_READONLY, D2, data(D1, 1));
    map_grant_ref(&mut w, &ft, &mut mem, D2, &map_op(D1, 8, HOST, VA), install).unwrap();
    map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 9, HOST | RO, VA + 0x1000),
        install,
    )
    .unwrap();
    let refs: Vec<_> = w.t(D2).external_refs().collect();
    assert_eq!(
        refs,
        vec![
            (table_frame(D2, 0), ExternalRef::HvWritable),
            (data(D1, 0), ExternalRef::PageAndType(PageType::Writable)),
            (data(D1, 1), ExternalRef::Page),
        ]
    );
    // Without them the audit sees the counts as too high.
    assert!(ft.audit(&mem, &[]).is_err());
    audit(&ft, &mem, &w);
}

// ------------------------------------------------------------ device halves

/// `GNTMAP_device_map`, as Xen (checked on real Xen by `xen-gntself`):
/// the bus address is the frame's machine address; a host+device mapping
/// holds a pin and frame references per half; each half is unmapped by
/// itself (the device half by its bus address, a wrong one being
/// `GNTST_bad_dev_addr` with nothing changed) and the handle goes with the
/// last half; the granter's in-use bits stay until both are gone.
#[test]
fn grant_device_and_host_halves() {
    world!(ft, mem, w);
    let frame = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, frame);
    let base = count(&ft, frame);
    let mut op = map_op(D1, 8, HOST | GNTMAP_DEVICE_MAP, VA);
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install).unwrap();
    m.write_to(&mut op);
    assert_eq!(op.dev_bus_addr, frame << 12);
    assert_eq!(m.halves(), 2);
    assert_eq!(w.t(D1).pins(8).unwrap().writable, 2);
    assert_eq!(count(&ft, frame), (base.0 + 2, base.1 + 2));
    audit(&ft, &mem, &w);
    // A wrong bus address: refused, nothing changes.
    let wrong = GnttabUnmapGrantRef {
        dev_bus_addr: (frame + 1) << 12,
        ..unmap_op(m.handle, 0)
    };
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &wrong, remove),
        Err(GNTST_BAD_DEV_ADDR)
    );
    assert_eq!(count(&ft, frame), (base.0 + 2, base.1 + 2));
    // The device half alone: the host entry stays, no flush owed.
    let dev = GnttabUnmapGrantRef {
        dev_bus_addr: frame << 12,
        ..unmap_op(m.handle, 0)
    };
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &dev, remove),
        Ok(Flush::NONE)
    );
    assert_eq!(w.t(D2).mapping(m.handle).map(|m| m.halves()), Some(1));
    assert!(mem.ptes.contains_key(&VA));
    assert_eq!(count(&ft, frame), (base.0 + 1, base.1 + 1));
    assert_eq!(
        flags_of(&mem, &w, D1, 8),
        PERMIT | GTF_READING | GTF_WRITING
    );
    audit(&ft, &mem, &w);
    // Again: the device half is gone, so nothing more (and still Ok).
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &dev, remove),
        Ok(Flush::NONE)
    );
    assert_eq!(count(&ft, frame), (base.0 + 1, base.1 + 1));
    // The host half, named by any address in its page: the handle goes.
    assert_eq!(
        unmap_grant_ref(
            &mut w,
            &ft,
            &mut mem,
            D2,
            &unmap_op(m.handle, VA + 0x10),
            remove
        ),
        Ok(Flush::NEEDED)
    );
    assert!(w.t(D2).mapping(m.handle).is_none());
    assert_eq!(count(&ft, frame), base);
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    audit(&ft, &mem, &w);

    // Device only, read-only: no entry installed, no type reference.
    let op = map_op(D1, 8, GNTMAP_DEVICE_MAP | RO, 0);
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &op, |_, _, _| {
        panic!("no host half to install")
    })
    .unwrap();
    assert_eq!((m.halves(), m.has_host()), (1, false));
    assert_eq!(count(&ft, frame), (base.0 + 1, base.1));
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT | GTF_READING);
    audit(&ft, &mem, &w);
    // A host address for a mapping with no host half removes nothing.
    let both = GnttabUnmapGrantRef {
        dev_bus_addr: frame << 12,
        ..unmap_op(m.handle, VA)
    };
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &both, |_, _, _| panic!(
            "no host half"
        )),
        Ok(Flush::NONE)
    );
    assert!(w.t(D2).mapping(m.handle).is_none());
    assert_eq!(count(&ft, frame), base);
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);

    // A virtual address off a page boundary maps that page (Xen).
    let m = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | RO, VA + 8),
        install,
    )
    .unwrap();
    assert_eq!(m.host_addr, VA);
    assert!(mem.ptes.contains_key(&VA));
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &unmap_op(m.handle, VA), remove),
        Ok(Flush::NEEDED)
    );
    audit(&ft, &mem, &w);
}

/// A domain that dies holding a host+device mapping releases both halves.
#[test]
fn grant_dying_mapper_releases_both_halves() {
    world!(ft, mem, w);
    let frame = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, frame);
    let base = count(&ft, frame);
    map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | GNTMAP_DEVICE_MAP, VA),
        install,
    )
    .unwrap();
    assert_eq!(release_domain(&mut w, &ft, &mut mem, D2), 0);
    assert_eq!(count(&ft, frame), base);
    assert_eq!(w.t(D1).pins(8).unwrap().writable, 0);
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
}

/// `GNTTABOP_unmap_and_replace`: with a new address the host entry is
/// replaced (the `replace` step, which the hypervisor does through the
/// frame table), without one it is removed; either way the host half's
/// pin and references go as for an unmap, and the device half stays. A
/// `contains_pte` mapping cannot be replaced; a failed replacement changes
/// nothing.
#[test]
fn grant_unmap_and_replace() {
    world!(ft, mem, w);
    let frame = data(D1, 0);
    grant(&mut mem, &w, D1, 8, PERMIT, D2, frame);
    let base = count(&ft, frame);
    let replace =
        |_: &FrameTable<'_>, mem: &mut Mem, m: &Mapping| mem.ptes.remove(&m.host_addr).is_some();
    let m = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | GNTMAP_DEVICE_MAP, VA),
        install,
    )
    .unwrap();
    let op = GnttabUnmapAndReplace {
        host_addr: VA,
        new_addr: VA + 0x1000,
        handle: m.handle,
        ..Default::default()
    };
    let refuse = |_: &FrameTable<'_>, _: &mut Mem, _: &Mapping| false;
    assert_eq!(
        unmap_and_replace(&mut w, &ft, &mut mem, D2, &op, remove, refuse),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(count(&ft, frame), (base.0 + 2, base.1 + 2));
    assert_eq!(
        unmap_and_replace(&mut w, &ft, &mut mem, D2, &op, remove, replace),
        Ok(Flush::NEEDED)
    );
    assert!(!mem.ptes.contains_key(&VA));
    assert_eq!(
        w.t(D2).mapping(m.handle).map(|m| m.has_device()),
        Some(true)
    );
    assert_eq!(count(&ft, frame), (base.0 + 1, base.1 + 1));
    assert_eq!(
        unmap_and_replace(&mut w, &ft, &mut mem, D2, &op, remove, replace),
        Ok(Flush::NONE),
        "no host half left"
    );
    let dev = GnttabUnmapGrantRef {
        dev_bus_addr: frame << 12,
        ..unmap_op(m.handle, 0)
    };
    assert_eq!(
        unmap_grant_ref(&mut w, &ft, &mut mem, D2, &dev, remove),
        Ok(Flush::NONE)
    );
    assert_eq!(
        unmap_and_replace(&mut w, &ft, &mut mem, D2, &op, remove, replace),
        Err(GNTST_BAD_HANDLE)
    );
    assert_eq!(count(&ft, frame), base);
    audit(&ft, &mem, &w);
    // new_addr 0: a plain removal.
    let m = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | RO, VA),
        install,
    )
    .unwrap();
    let op = GnttabUnmapAndReplace {
        host_addr: VA,
        new_addr: 0,
        handle: m.handle,
        ..Default::default()
    };
    assert_eq!(
        unmap_and_replace(&mut w, &ft, &mut mem, D2, &op, remove, refuse),
        Ok(Flush::NEEDED)
    );
    assert!(w.t(D2).mapping(m.handle).is_none());
    assert_eq!(count(&ft, frame), base);
    assert_eq!(flags_of(&mem, &w, D1, 8), PERMIT);
    // contains_pte: never replaced.
    let m = map_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &map_op(D1, 8, HOST | PTE | RO, VA + 8),
        install,
    )
    .unwrap();
    let op = GnttabUnmapAndReplace {
        host_addr: VA + 8,
        new_addr: VA + 0x1000,
        handle: m.handle,
        ..Default::default()
    };
    assert_eq!(
        unmap_and_replace(&mut w, &ft, &mut mem, D2, &op, remove, replace),
        Err(GNTST_GENERAL_ERROR)
    );
    audit(&ft, &mem, &w);
}

#[test]
fn reach_is_each_domain_once_in_id_order() {
    assert_eq!(Reach::one(D2).and(D1).and(D3).as_slice(), &[D1, D2, D3]);
    assert_eq!(Reach::one(D2).and(D2).as_slice(), &[D2]);
    // Reserved ids name no table: nothing to lock.
    assert_eq!(Reach::one(DOMID_IO).and(D1).as_slice(), &[D1]);
    assert_eq!(Reach::one(DOMID_SELF).as_slice(), &[] as &[u16]);
    assert_eq!(reach_target(D2, DOMID_SELF), Reach::one(D2));
    assert_eq!(reach_target(D2, D0), Reach::one(D0));
    assert_eq!(reach_map(D3, &map_op(D1, 0, 0, 0)).as_slice(), &[D1, D3]);
}

#[test]
fn copy_reaches_both_sides_and_self_is_the_caller() {
    let side = |domid: u16| GnttabCopyPtr {
        u: 0,
        domid,
        offset: 0,
        _pad: 0,
    };
    let op = |s: u16, d: u16| GnttabCopy {
        source: side(s),
        dest: side(d),
        flags: GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF,
        ..Default::default()
    };
    assert_eq!(reach_copy(D0, &op(D3, D1)).as_slice(), &[D1, D3]);
    assert_eq!(reach_copy(D2, &op(DOMID_SELF, D1)).as_slice(), &[D1, D2]);
    assert_eq!(reach_copy(D2, &op(D2, D2)).as_slice(), &[D2]);
}

#[test]
fn unmap_reaches_the_handles_granter_only_while_it_is_mapped() {
    world!(ft, mem, w);
    grant(&mut mem, &w, D1, 3, PERMIT, D2, data(D1, 0));
    let op = map_op(D1, 3, GNTMAP_HOST_MAP, 0x1000);
    let m = map_grant_ref(&mut w, &ft, &mut mem, D2, &op, install).unwrap();
    assert_eq!(
        reach_unmap(Some(w.t(D2)), D2, m.handle).as_slice(),
        &[D1, D2]
    );
    assert_eq!(
        reach_unmap(Some(w.t(D2)), D2, m.handle + 1).as_slice(),
        &[D2]
    );
    assert_eq!(reach_unmap(None, D2, m.handle).as_slice(), &[D2]);
    let un = unmap_grant_ref(
        &mut w,
        &ft,
        &mut mem,
        D2,
        &unmap_op(m.handle, 0x1000),
        remove,
    );
    assert_eq!(un, Ok(Flush::NEEDED));
    assert_eq!(reach_unmap(Some(w.t(D2)), D2, m.handle).as_slice(), &[D2]);
}
