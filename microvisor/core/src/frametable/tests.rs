//! Unit tests of the frame-table rules and of each hostile scenario: every
//! refused request must return Xen's error code and leave a clean audit.

use std::vec;
use std::vec::Vec;

use super::*;

pub(super) const N: usize = 64;
pub(super) const D1: u16 = 1;
pub(super) const D2: u16 = 2;

pub(super) const P: u64 = pte::PRESENT;
pub(super) const W: u64 = pte::RW;
pub(super) const U: u64 = pte::USER;
pub(super) const A: u64 = pte::ACCESSED;
pub(super) const D: u64 = pte::DIRTY;
pub(super) const PWT: u64 = 1 << 3;
pub(super) const PCD: u64 = 1 << 4;
pub(super) const PSE: u64 = pte::PSE;
pub(super) const G: u64 = pte::GLOBAL;
pub(super) const NX: u64 = pte::NX;
pub(super) const BIT62: u64 = 1 << 62;

/// What the hypervisor puts in L4 slots 256..=271 (values only; the frames
/// they name lie outside the test machine).
pub(super) const HV: [u64; HV_L4_SLOTS] = {
    let mut a = [0u64; HV_L4_SLOTS];
    let mut i = 0;
    while i < HV_L4_SLOTS {
        a[i] = ((0x1000 + i as u64) << 12) | 0x63;
        i += 1;
    }
    a
};

/// Fake machine memory: 512 entries per frame, plus this CPU's TLB (how
/// often it was flushed and its TLB-flush time) and other CPUs' (time,
/// flushes).
pub(super) struct Mem {
    frames: Vec<[u64; ENTRIES]>,
    pub(super) flushes: u32,
    pub(super) tlb_time: u64,
    pub(super) remote: Vec<(u64, u32)>,
}

impl Mem {
    pub(super) fn new(n: usize) -> Self {
        Self {
            frames: vec![[0; ENTRIES]; n],
            flushes: 0,
            tlb_time: 0,
            remote: Vec::new(),
        }
    }
}

impl TableMemory for Mem {
    fn read(&self, mfn: u64, idx: usize) -> u64 {
        usize::try_from(mfn)
            .ok()
            .and_then(|m| self.frames.get(m))
            .and_then(|f| f.get(idx))
            .copied()
            .expect("policy read outside the machine")
    }

    fn write(&mut self, mfn: u64, idx: usize, val: u64) {
        let slot = usize::try_from(mfn)
            .ok()
            .and_then(|m| self.frames.get_mut(m))
            .and_then(|f| f.get_mut(idx))
            .expect("policy write outside the machine");
        *slot = val;
    }

    fn flush_tlbs(&mut self, req: FlushRequest<'_>) {
        if req.needs_flush(self.tlb_time) {
            let t = req.clock().tick();
            self.flushes += 1;
            self.tlb_time = t;
        }
        for (time, flushes) in &mut self.remote {
            if req.needs_flush(*time) {
                *time = req.clock().tick();
                *flushes += 1;
            }
        }
    }
}

pub(super) const fn ent(mfn: u64, flags: u64) -> u64 {
    (mfn << 12) | flags
}

pub(super) const fn ma(mfn: u64, idx: usize) -> u64 {
    (mfn << 12) | (idx as u64 * 8)
}

type Ext = Vec<(u64, ExternalRef)>;

const BASE: ExternalRef = ExternalRef::PageAndType(PageType::L4);

// D1: L4 2 -> L3 3 -> L2 4 -> L1 5 -> data 6..=9 (RW) and 10 (RO); spare 11..=31.
// D2: L4 32 -> L3 33 -> L2 34 -> L1 35 -> data 36..=39 (RW) and 40 (RO); spare 41..=63.
// Frames 0 and 1 belong to the hypervisor.
fn boot(ft: &mut FrameTable<'_>, mem: &mut Mem) -> Ext {
    ft.reserve_for_hypervisor(0).unwrap();
    ft.reserve_for_hypervisor(1).unwrap();
    for mfn in 2..32 {
        ft.assign(mfn, D1).unwrap();
    }
    for mfn in 32..64 {
        ft.assign(mfn, D2).unwrap();
    }
    let mut ext = Vec::new();
    for (dom, b) in [(D1, 2u64), (D2, 32)] {
        mem.write(b, 0, ent(b + 1, P | W | U));
        mem.write(b + 1, 0, ent(b + 2, P | W | U));
        mem.write(b + 2, 0, ent(b + 3, P | W | U));
        for i in 0..4 {
            mem.write(b + 3, i, ent(b + 4 + i as u64, P | W | U));
        }
        mem.write(b + 3, 4, ent(b + 8, P | U));
        ft.new_baseptr(mem, dom, b, None).unwrap();
        ext.push((b, BASE));
    }
    ext
}

macro_rules! world {
    ($ft:ident, $mem:ident, $ext:ident) => {
        let mut pages = vec![PageInfo::default(); N];
        #[allow(unused_mut)]
        let mut $ft = FrameTable::new(&mut pages, HV);
        #[allow(unused_mut)]
        let mut $mem = Mem::new(N);
        #[allow(unused_mut)]
        let mut $ext = boot(&mut $ft, &mut $mem);
    };
}

/// The audit's verdict, checked to be the same whatever the size of the
/// scratch buffer (one chunk per frame up to more than every frame at once).
#[track_caller]
fn audit(ft: &FrameTable<'_>, mem: &Mem, ext: &[(u64, ExternalRef)]) -> Result<(), AuditError> {
    let r = ft.audit(mem, ext);
    for size in [1, 5, N - 1, N, 3 * N] {
        let mut scratch = vec![AuditTally::ZERO; size];
        assert_eq!(
            ft.audit_with(mem, ext, &mut scratch),
            r,
            "scratch of {size} tallies"
        );
    }
    r
}

#[track_caller]
fn clean(ft: &FrameTable<'_>, mem: &Mem, ext: &[(u64, ExternalRef)]) {
    if let Err(e) = audit(ft, mem, ext) {
        panic!("audit failed: {e}");
    }
}

/// An update by `dom` of entry `idx` of table `table`, mapping `dom`'s own frames.
fn upd(
    ft: &mut FrameTable<'_>,
    mem: &mut Mem,
    dom: u16,
    table: u64,
    idx: usize,
    val: u64,
) -> Result<Flush, Errno> {
    ft.mod_entry(mem, dom, dom, ma(table, idx), val, false)
}

fn info(ft: &FrameTable<'_>, mfn: u64) -> PageInfo {
    ft.info(mfn).unwrap()
}

#[test]
fn boot_validates_every_level_and_audits_clean() {
    world!(ft, mem, ext);
    clean(&ft, &mem, &ext);
    for (mfn, ty) in [
        (2, PageType::L4),
        (3, PageType::L3),
        (4, PageType::L2),
        (5, PageType::L1),
    ] {
        let p = info(&ft, mfn);
        assert_eq!(p.page_type(), ty);
        assert!(p.is_validated());
        assert_eq!(p.type_count(), 1);
        assert_eq!(p.count(), 2, "allocation + one reference");
    }
    let data = info(&ft, 6);
    assert_eq!(
        (data.page_type(), data.type_count(), data.count()),
        (PageType::Writable, 1, 2)
    );
    let ro = info(&ft, 10);
    assert_eq!((ro.type_count(), ro.count()), (0, 2));
    for (i, &hv) in HV.iter().enumerate() {
        assert_eq!(mem.read(2, HV_L4_FIRST + i), hv);
    }
    assert_eq!(
        mem.read(2, 0),
        ent(3, P | W | U | A),
        "L4 entries get USER and ACCESSED"
    );
}

#[test]
fn user_bit_is_forced_on_every_level() {
    world!(ft, mem, ext);
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 20, ent(11, P)),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(5, 20), ent(11, P | U | pte::GUEST_KERNEL));
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 21, ent(11, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(5, 21), ent(11, P | U));
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 4, 1, ent(12, P | W)),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(4, 1), ent(12, P | W | U));
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 3, 1, ent(13, P | W)),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(3, 1), ent(13, P | W | U));
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 1, ent(14, P | W)),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(2, 1), ent(14, P | W | U | A));
    clean(&ft, &mem, &ext);
}

// ---------------------------------------------------------------------------
// Hostile scenarios (issue item 9)
// ---------------------------------------------------------------------------

#[test]
fn writable_mapping_of_own_page_table_is_refused() {
    world!(ft, mem, ext);
    for table in [2, 3, 4, 5] {
        assert_eq!(
            upd(&mut ft, &mut mem, D1, 5, 20, ent(table, P | W | U)),
            Err(Errno::EBUSY)
        );
        clean(&ft, &mem, &ext);
        assert_eq!(mem.read(5, 20), 0, "nothing written on failure");
    }
    // Read-only is fine, also of the L1 itself; making it writable is not.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 20, ent(5, P | U)),
        Ok(Flush::NONE)
    );
    clean(&ft, &mem, &ext);
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 20, ent(5, P | W | U)),
        Err(Errno::EBUSY)
    );
    clean(&ft, &mem, &ext);
    assert_eq!(upd(&mut ft, &mut mem, D1, 5, 20, 0), Ok(Flush::NEEDED));
    clean(&ft, &mem, &ext);
    // A table reached through validation: an L1 holding a writable mapping of
    // an L2 cannot be hooked in.
    mem.write(11, 0, ent(4, P | W | U));
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 4, 1, ent(11, P | W | U)),
        Err(Errno::EBUSY)
    );
    clean(&ft, &mem, &ext);
    assert_eq!(info(&ft, 11).type_count(), 0);
}

#[test]
fn mapping_another_domains_frame_is_refused() {
    world!(ft, mem, ext);
    for flags in [P | U, P | W | U] {
        assert_eq!(
            upd(&mut ft, &mut mem, D1, 5, 20, ent(36, flags)),
            Err(Errno::EBUSY)
        );
        clean(&ft, &mem, &ext);
    }
    // Naming a foreign page owner needs privilege.
    assert_eq!(resolve_pg_owner(D1, D2, false), Err(Errno::EPERM));
    assert_eq!(resolve_pg_owner(D1, D1, true), Err(Errno::ESRCH));
    assert_eq!(resolve_pg_owner(D1, OWNER_XEN, true), Err(Errno::ESRCH));
    assert_eq!(resolve_pg_owner(D1, DOMID_SELF, false), Ok(D1));
    let pg_owner = resolve_pg_owner(D1, D2, true).unwrap();
    assert_eq!(
        ft.mod_entry(&mut mem, D1, pg_owner, ma(5, 20), ent(36, P | W | U), false),
        Ok(Flush::NONE)
    );
    clean(&ft, &mem, &ext);
    assert_eq!(info(&ft, 36).count(), 3);
    // A foreign page owner cannot be used for L2-L4 updates.
    assert_eq!(
        ft.mod_entry(&mut mem, D1, D2, ma(4, 1), ent(35, P | U), false),
        Err(Errno::EINVAL)
    );
    // Nor can a foreign L1 frame be hooked in by D1 itself.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 4, 1, ent(35, P | U)),
        Err(Errno::EINVAL)
    );
    clean(&ft, &mem, &ext);
}

#[test]
fn mapping_hypervisor_free_or_absent_frames_is_refused() {
    world!(ft, mem, ext);
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 20, ent(0, P | U)),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 20, ent(1, P | W | U)),
        Err(Errno::EBUSY)
    );
    clean(&ft, &mem, &ext);
    ft.release(31, D1).unwrap();
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 20, ent(31, P | U)),
        Err(Errno::EBUSY)
    );
    clean(&ft, &mem, &ext);
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 20, ent(1000, P | U)),
        Err(Errno::EPERM)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 20, pte::ADDR_MASK | P | U),
        Err(Errno::EPERM)
    );
    // The hypervisor's frames cannot be table frames either.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 4, 1, ent(0, P | U)),
        Err(Errno::EINVAL)
    );
    assert_eq!(ft.pin(&mut mem, D1, 0, 1), Err(Errno::EINVAL));
    clean(&ft, &mem, &ext);
}

#[test]
fn reserved_l4_slots_are_immutable() {
    world!(ft, mem, ext);
    for idx in HV_L4_FIRST..HV_L4_FIRST + HV_L4_SLOTS {
        assert_eq!(upd(&mut ft, &mut mem, D1, 2, idx, 0), Err(Errno::EINVAL));
        assert_eq!(
            upd(&mut ft, &mut mem, D1, 2, idx, ent(3, P | U)),
            Err(Errno::EINVAL)
        );
        assert_eq!(mem.read(2, idx), HV[idx - HV_L4_FIRST]);
        clean(&ft, &mem, &ext);
    }
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, HV_L4_FIRST - 1, 0),
        Ok(Flush::NONE)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, HV_L4_FIRST + HV_L4_SLOTS, 0),
        Ok(Flush::NONE)
    );
    // Whatever a guest leaves there is replaced when the L4 is validated, and
    // ignored when it is devalidated.
    for i in 0..HV_L4_SLOTS {
        mem.write(11, HV_L4_FIRST + i, ent(6, P | W | U));
    }
    assert_eq!(ft.pin(&mut mem, D1, 11, 4), Ok(()));
    assert_eq!(mem.read(11, HV_L4_FIRST), HV[0]);
    clean(&ft, &mem, &ext);
    assert_eq!(ft.unpin(&mut mem, D1, 11), Ok(()));
    clean(&ft, &mem, &ext);
}

#[test]
fn superpages_and_forbidden_flags_are_refused() {
    world!(ft, mem, ext);
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 4, 1, ent(16, P | W | U | PSE)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 3, 1, ent(16, P | W | U | PSE)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 1, ent(16, P | W | U | PSE)),
        Err(Errno::EINVAL)
    );
    for bad in [PWT, PCD, PSE, BIT62] {
        assert_eq!(
            upd(&mut ft, &mut mem, D1, 5, 20, ent(11, P | U | bad)),
            Err(Errno::EINVAL)
        );
    }
    for bad in [PWT, PCD, G] {
        assert_eq!(
            upd(&mut ft, &mut mem, D1, 4, 1, ent(16, P | U | bad)),
            Err(Errno::EINVAL)
        );
    }
    clean(&ft, &mem, &ext);
    // Validation applies the same rules to entries already in a new table.
    mem.write(16, 7, ent(17, P | W | U | PSE));
    assert_eq!(ft.pin(&mut mem, D1, 16, 2), Err(Errno::EINVAL));
    assert_eq!(ft.pin(&mut mem, D1, 16, 3), Err(Errno::EINVAL));
    clean(&ft, &mem, &ext);
    // What L1 entries may carry.
    for ok in [G, A | D, NX, 0x7 << 9, 1 << 52] {
        assert_eq!(
            upd(&mut ft, &mut mem, D1, 5, 20, ent(11, P | U | ok)),
            Ok(Flush::NONE)
        );
    }
    clean(&ft, &mem, &ext);
}

#[test]
fn linear_page_tables_are_read_only_and_one_level_deep() {
    world!(ft, mem, ext);
    // Read-only self-maps at L4, L3 and L2 take no reference.
    let before: Vec<PageInfo> = (2..6).map(|m| info(&ft, m)).collect();
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 510, ent(2, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 3, 510, ent(3, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 4, 510, ent(4, P | U)),
        Ok(Flush::NONE)
    );
    for (m, b) in (2..6).zip(&before) {
        assert_eq!(
            (info(&ft, m).count(), info(&ft, m).type_count()),
            (b.count(), b.type_count())
        );
    }
    clean(&ft, &mem, &ext);
    // Writable ones are refused.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 509, ent(2, P | W | U)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 3, 509, ent(3, P | W | U)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 4, 509, ent(4, P | W | U)),
        Err(Errno::EINVAL)
    );
    clean(&ft, &mem, &ext);

    // Two more validated L4s (pinned, empty).
    ft.pin(&mut mem, D1, 16, 4).unwrap();
    ft.pin(&mut mem, D1, 17, 4).unwrap();
    // 2 -> 16 read-only: one level of linear mapping is fine.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 508, ent(16, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(info(&ft, 2).linear_count(), 1);
    assert_eq!(info(&ft, 16).linear_count(), -1);
    clean(&ft, &mem, &ext);
    // 16 is a linear target, so it may not hold linear entries (XSA-240) ...
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 16, 1, ent(17, P | U)),
        Err(Errno::EINVAL)
    );
    // ... and 2 holds linear entries, so it may not become a target.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 17, 1, ent(2, P | U)),
        Err(Errno::EINVAL)
    );
    // A writable linear entry is refused.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 507, ent(17, P | W | U)),
        Err(Errno::EINVAL)
    );
    clean(&ft, &mem, &ext);
    // A chain built by validation is refused the same way.
    mem.write(18, 0, ent(2, P | U));
    assert_eq!(ft.pin(&mut mem, D1, 18, 4), Err(Errno::EINVAL));
    clean(&ft, &mem, &ext);
    // Unpinning a linear target keeps it validated while it is mapped.
    ft.unpin(&mut mem, D1, 16).unwrap();
    assert!(info(&ft, 16).is_validated());
    clean(&ft, &mem, &ext);
    assert_eq!(upd(&mut ft, &mut mem, D1, 2, 508, 0), Ok(Flush::NEEDED));
    assert!(!info(&ft, 16).is_validated());
    assert_eq!(info(&ft, 2).linear_count(), 0);
    clean(&ft, &mem, &ext);
    // L2 and L3 linear entries between distinct validated tables.
    ft.pin(&mut mem, D1, 19, 2).unwrap();
    ft.pin(&mut mem, D1, 20, 3).unwrap();
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 4, 2, ent(19, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 3, 2, ent(20, P | U)),
        Ok(Flush::NONE)
    );
    clean(&ft, &mem, &ext);
    // A linear target must already be validated.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 2, ent(21, P | U)),
        Ok(Flush::NONE),
        "an empty frame validates as L3"
    );
    assert_eq!(info(&ft, 21).page_type(), PageType::L3);
    clean(&ft, &mem, &ext);
}

#[test]
fn xsa182_rw_only_flip_is_fully_checked() {
    world!(ft, mem, ext);
    for (table, idx) in [(2u64, 510usize), (3, 510), (4, 510)] {
        assert_eq!(
            upd(&mut ft, &mut mem, D1, table, idx, ent(table, P | U)),
            Ok(Flush::NONE)
        );
        let ro = mem.read(table, idx);
        assert_eq!(
            upd(&mut ft, &mut mem, D1, table, idx, ro | W),
            Err(Errno::EINVAL)
        );
        assert_eq!(mem.read(table, idx), ro);
        // Flipping whitelisted bits still takes the fast path.
        assert_eq!(
            upd(&mut ft, &mut mem, D1, table, idx, ro | NX),
            Ok(Flush::NONE)
        );
        clean(&ft, &mem, &ext);
    }
    // The same for an L1 mapping its own table, and for an ordinary
    // read-only mapping of an L2 (which must not become writable).
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 30, ent(5, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 30, ent(5, P | W | U)),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 31, ent(4, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 31, ent(4, P | W | U)),
        Err(Errno::EBUSY)
    );
    clean(&ft, &mem, &ext);
}

#[test]
fn new_baseptr_to_unvalidatable_or_foreign_frame_is_refused() {
    world!(ft, mem, mut_ext);
    let mut ext = mut_ext;
    assert_eq!(
        ft.new_baseptr(&mut mem, D1, 32, Some(2)),
        Err(Errno::EINVAL)
    );
    assert_eq!(ft.new_baseptr(&mut mem, D1, 0, Some(2)), Err(Errno::EINVAL));
    assert_eq!(
        ft.new_baseptr(&mut mem, D1, 1000, Some(2)),
        Err(Errno::EINVAL)
    );
    clean(&ft, &mem, &ext);
    // A data frame mapped writable cannot become an L4.
    assert_eq!(ft.new_baseptr(&mut mem, D1, 6, Some(2)), Err(Errno::EINVAL));
    clean(&ft, &mem, &ext);
    // An L4 with a forbidden flag.
    mem.write(16, 3, ent(17, P | W | U | PWT));
    assert_eq!(
        ft.new_baseptr(&mut mem, D1, 16, Some(2)),
        Err(Errno::EINVAL)
    );
    clean(&ft, &mem, &ext);
    // An L4 whose tree maps a foreign frame four levels down: everything
    // taken on the way is given back.
    mem.write(18, 0, ent(19, P | W | U));
    mem.write(19, 0, ent(20, P | W | U));
    mem.write(20, 0, ent(21, P | W | U));
    mem.write(21, 0, ent(11, P | W | U));
    mem.write(21, 1, ent(36, P | U));
    assert_eq!(ft.new_baseptr(&mut mem, D1, 18, Some(2)), Err(Errno::EBUSY));
    clean(&ft, &mem, &ext);
    for m in [11, 18, 19, 20, 21] {
        let p = info(&ft, m);
        assert_eq!((p.count(), p.type_count()), (1, 0), "frame {m}");
    }
    for m in [18, 19, 20, 21] {
        assert_eq!(info(&ft, m).page_type(), PageType::None, "frame {m}");
    }
    // A good one sharing the L3: the old L4 is devalidated, the L3 survives.
    mem.write(22, 0, ent(3, P | W | U));
    assert_eq!(ft.new_baseptr(&mut mem, D1, 22, Some(2)), Ok(()));
    ext[0] = (22, BASE);
    clean(&ft, &mem, &ext);
    assert_eq!(info(&ft, 2).type_count(), 0);
    assert!(!info(&ft, 2).is_validated());
    assert!(info(&ft, 3).is_validated());
    // Same frame again: nothing changes.
    assert_eq!(ft.new_baseptr(&mut mem, D1, 22, Some(22)), Ok(()));
    clean(&ft, &mem, &ext);
}

#[test]
fn pin_and_unpin_rules() {
    world!(ft, mem, ext);
    assert_eq!(
        ft.unpin(&mut mem, D1, 5),
        Err(Errno::EINVAL),
        "validated but not pinned"
    );
    assert_eq!(
        ft.unpin(&mut mem, D1, 11),
        Err(Errno::EINVAL),
        "never a table"
    );
    clean(&ft, &mem, &ext);
    assert_eq!(ft.pin(&mut mem, D1, 5, 1), Ok(()));
    assert_eq!(
        ft.pin(&mut mem, D1, 5, 1),
        Err(Errno::EINVAL),
        "already pinned"
    );
    assert_eq!(
        ft.pin(&mut mem, D1, 5, 2),
        Err(Errno::EINVAL),
        "type mismatch"
    );
    clean(&ft, &mem, &ext);
    assert_eq!(ft.unpin(&mut mem, D2, 5), Err(Errno::EINVAL), "not D2's");
    assert_eq!(ft.unpin(&mut mem, D1, 5), Ok(()));
    assert_eq!(ft.unpin(&mut mem, D1, 5), Err(Errno::EINVAL));
    clean(&ft, &mem, &ext);
    for level in [0, 5, 255] {
        assert_eq!(ft.pin(&mut mem, D1, 11, level), Err(Errno::EINVAL));
    }
    assert_eq!(
        ft.pin(&mut mem, D1, 6, 1),
        Err(Errno::EINVAL),
        "writable frame"
    );
    assert_eq!(
        ft.pin(&mut mem, D1, 36, 1),
        Err(Errno::EINVAL),
        "foreign frame"
    );
    clean(&ft, &mem, &ext);
    // A pinned table stays validated with no other user; unpin devalidates.
    mem.write(11, 0, ent(12, P | W | U));
    assert_eq!(ft.pin(&mut mem, D1, 11, 1), Ok(()));
    assert_eq!(info(&ft, 12).page_type(), PageType::Writable);
    clean(&ft, &mem, &ext);
    assert_eq!(ft.unpin(&mut mem, D1, 11), Ok(()));
    assert_eq!(info(&ft, 12).type_count(), 0);
    assert_eq!(info(&ft, 12).count(), 1);
    clean(&ft, &mem, &ext);
}

#[test]
fn release_of_a_frame_in_use_is_refused() {
    world!(ft, mem, ext);
    for (mfn, why) in [
        (2, "base pointer"),
        (3, "L3"),
        (4, "L2"),
        (5, "L1"),
        (6, "RW"),
        (10, "RO"),
    ] {
        assert_eq!(ft.release(mfn, D1), Err(Errno::EBUSY), "{why}");
        clean(&ft, &mem, &ext);
    }
    assert_eq!(ft.release(36, D1), Err(Errno::EINVAL));
    assert_eq!(ft.release(0, D1), Err(Errno::EINVAL));
    assert_eq!(ft.release(1000, D1), Err(Errno::EINVAL));
    // A pinned table nobody maps is still in use.
    ft.pin(&mut mem, D1, 16, 1).unwrap();
    assert_eq!(ft.release(16, D1), Err(Errno::EBUSY));
    clean(&ft, &mem, &ext);
    ft.unpin(&mut mem, D1, 16).unwrap();
    assert_eq!(ft.release(16, D1), Ok(()));
    assert_eq!(ft.owner(16), Some(OWNER_FREE));
    assert_eq!(ft.release(16, D1), Err(Errno::EINVAL), "twice");
    clean(&ft, &mem, &ext);
    // Once unmapped, a data frame can go.
    assert_eq!(upd(&mut ft, &mut mem, D1, 5, 0, 0), Ok(Flush::NEEDED));
    assert_eq!(ft.release(6, D1), Ok(()));
    clean(&ft, &mem, &ext);
    // And be given to someone else.
    assert_eq!(ft.assign(6, D2), Ok(()));
    assert_eq!(ft.assign(6, D1), Err(Errno::EBUSY));
    clean(&ft, &mem, &ext);
}

/// A freed frame keeps a TLB stamp until the allocator hands it out
/// again (`reuse`): then the CPUs that have not flushed since it was
/// freed flush, once for the whole batch, and the stamp goes.
#[test]
fn reuse_of_freed_frames_flushes_cpus_not_flushed_since_the_free() {
    world!(ft, mem, ext);
    // CPU 1 flushed before the frames went, CPU 2 begins a flush before
    // the second one goes (its time is not after that frame's stamp).
    mem.remote = vec![(ft.tlb_clock().tick(), 0), (0, 0)];
    assert_eq!(upd(&mut ft, &mut mem, D1, 5, 0, 0), Ok(Flush::NEEDED));
    assert_eq!(ft.release(6, D1), Ok(()));
    mem.remote[1].0 = ft.tlb_clock().tick();
    assert_eq!(upd(&mut ft, &mut mem, D1, 5, 1, 0), Ok(Flush::NEEDED));
    assert_eq!(ft.release(7, D1), Ok(()));
    // This CPU flushed after both.
    mem.tlb_time = ft.tlb_clock().tick();
    clean(&ft, &mem, &ext);
    let before = mem.flushes;
    // Frame 5 is not free: left alone.
    ft.reuse(&mut mem, 5, 3);
    assert_eq!(mem.flushes, before, "this CPU flushed since");
    let flushed: Vec<u32> = mem.remote.iter().map(|r| r.1).collect();
    assert_eq!(flushed, vec![1, 1], "one flush each for the batch");
    // The stamps went with the flush: handed out again, no flush.
    ft.reuse(&mut mem, 6, 2);
    let flushed: Vec<u32> = mem.remote.iter().map(|r| r.1).collect();
    assert_eq!(flushed, vec![1, 1]);
    assert_eq!(info(&ft, 6), PageInfo::FREE);
    assert_eq!(info(&ft, 7), PageInfo::FREE);
    // A CPU that flushed after the free is skipped.
    assert_eq!(ft.assign(6, D2), Ok(()));
    assert_eq!(ft.release(6, D2), Ok(()));
    mem.remote[0].0 = ft.tlb_clock().tick();
    ft.reuse(&mut mem, 6, 1);
    let flushed: Vec<u32> = mem.remote.iter().map(|r| r.1).collect();
    assert_eq!(flushed, vec![1, 2], "only the CPU not flushed since");
    clean(&ft, &mem, &ext);
}

#[test]
fn ten_thousand_map_unmap_cycles_leak_nothing() {
    world!(ft, mem, ext);
    let counts = |ft: &FrameTable<'_>| -> Vec<(u32, u32)> {
        (0..N as u64)
            .map(|m| (info(ft, m).count(), info(ft, m).type_count()))
            .collect()
    };
    let baseline = counts(&ft);
    mem.write(12, 7, ent(13, P | W | U));
    for i in 0..10_000u32 {
        let (table, idx, val) = match i % 4 {
            0 => (5, 100, ent(11, P | W | U)),
            1 => (5, 100, ent(11, P | U)),
            2 => (4, 100, ent(12, P | W | U)),
            _ => (3, 100, ent(14, P | W | U)),
        };
        assert_eq!(upd(&mut ft, &mut mem, D1, table, idx, val), Ok(Flush::NONE));
        assert_eq!(upd(&mut ft, &mut mem, D1, table, idx, 0), Ok(Flush::NEEDED));
        if i % 1000 == 0 {
            clean(&ft, &mem, &ext);
        }
    }
    clean(&ft, &mem, &ext);
    assert_eq!(counts(&ft), baseline);
}

#[test]
fn relinquish_frees_everything() {
    world!(ft, mem, ext);
    // Make D1's state busy: pins, a linear entry, a self-map, a second tree.
    ft.pin(&mut mem, D1, 5, 1).unwrap();
    ft.pin(&mut mem, D1, 16, 4).unwrap();
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 500, ent(16, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 501, ent(2, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 16, 0, ent(3, P | W | U)),
        Ok(Flush::NONE)
    );
    clean(&ft, &mem, &ext);
    // The caller drops D1's base pointer, then the domain dies.
    ft.put_page_and_type(&mut mem, 2);
    let ext: Ext = ext.into_iter().filter(|&(m, _)| m != 2).collect();
    let mut freed = Vec::new();
    assert_eq!(ft.relinquish_domain(&mut mem, D1, |m| freed.push(m)), 0);
    freed.sort_unstable();
    assert_eq!(freed, (2..32).collect::<Vec<u64>>());
    // Handed out again: one flush (this CPU never flushed), stamps gone.
    let before = mem.flushes;
    ft.reuse(&mut mem, 2, 30);
    assert_eq!(mem.flushes, before + 1, "freed frames flushed on reuse");
    for m in 2..32 {
        assert_eq!(info(&ft, m), PageInfo::FREE, "frame {m}");
    }
    clean(&ft, &mem, &ext);
    // D2 is untouched.
    assert!(info(&ft, 35).is_validated());
    assert_eq!(
        ft.relinquish_domain(&mut mem, D1, |_| panic!("nothing left")),
        0
    );
}

#[test]
fn relinquish_waits_for_references_held_elsewhere() {
    world!(ft, mem, ext);
    // D2 (privileged) maps D1's frame 11 writable; the caller still holds
    // D1's base pointer when D1 dies.
    assert_eq!(
        ft.mod_entry(&mut mem, D2, D1, ma(35, 50), ent(11, P | W | U), false),
        Ok(Flush::NONE)
    );
    let mut freed = Vec::new();
    assert_eq!(ft.relinquish_domain(&mut mem, D1, |m| freed.push(m)), 2);
    assert_eq!(freed.len(), 28);
    assert!(!freed.contains(&2) && !freed.contains(&11));
    clean(&ft, &mem, &ext);
    // Dying frames take no new references.
    assert_eq!(
        ft.mod_entry(&mut mem, D2, D1, ma(35, 51), ent(11, P | U), false),
        Err(Errno::EBUSY)
    );
    assert_eq!(ft.assign(11, D2), Err(Errno::EBUSY));
    clean(&ft, &mem, &ext);
    // The caller drops the base pointer.
    ft.put_page_and_type(&mut mem, 2);
    let ext: Ext = ext.into_iter().filter(|&(m, _)| m != 2).collect();
    clean(&ft, &mem, &ext);
    freed.clear();
    assert_eq!(ft.relinquish_domain(&mut mem, D1, |m| freed.push(m)), 1);
    assert_eq!(freed, [2]);
    // D2 unmaps: the last reference to a dying frame goes, which the
    // table reports once.
    let _ = ft.take_released_dying();
    assert_eq!(
        ft.mod_entry(&mut mem, D2, D2, ma(35, 50), 0, false),
        Ok(Flush::NEEDED)
    );
    assert!(ft.take_released_dying());
    assert!(!ft.take_released_dying());
    clean(&ft, &mem, &ext);
    freed.clear();
    assert_eq!(ft.relinquish_domain(&mut mem, D1, |m| freed.push(m)), 0);
    assert_eq!(freed, [11]);
    clean(&ft, &mem, &ext);
}

// ---------------------------------------------------------------------------
// Other rules
// ---------------------------------------------------------------------------

#[test]
fn flush_tokens_report_lost_access() {
    world!(ft, mem, ext);
    let e = |ft: &mut FrameTable<'_>, mem: &mut Mem, v| upd(ft, mem, D1, 5, 40, v);
    assert_eq!(e(&mut ft, &mut mem, ent(11, P | U)), Ok(Flush::NONE));
    assert_eq!(
        e(&mut ft, &mut mem, ent(11, P | W | U)),
        Ok(Flush::NONE),
        "gaining RW"
    );
    assert_eq!(
        e(&mut ft, &mut mem, ent(11, P | W | U | NX)),
        Ok(Flush::NONE),
        "fast path"
    );
    assert_eq!(
        e(&mut ft, &mut mem, ent(11, P | U)),
        Ok(Flush::NEEDED),
        "losing RW"
    );
    assert_eq!(
        e(&mut ft, &mut mem, ent(12, P | U)),
        Ok(Flush::NEEDED),
        "other frame"
    );
    assert_eq!(e(&mut ft, &mut mem, 0), Ok(Flush::NEEDED), "unmap");
    assert_eq!(
        e(&mut ft, &mut mem, 0x1234_5000),
        Ok(Flush::NONE),
        "non-present to non-present"
    );
    assert!(Flush::NONE.merge(Flush::NEEDED).is_needed());
    assert!(!Flush::NONE.merge(Flush::NONE).is_needed());
    clean(&ft, &mem, &ext);
}

#[test]
fn type_change_after_writable_use_flushes_first() {
    world!(ft, mem, ext);
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 40, ent(11, P | W | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(upd(&mut ft, &mut mem, D1, 5, 40, 0), Ok(Flush::NEEDED));
    let before = mem.flushes;
    assert_eq!(ft.pin(&mut mem, D1, 11, 1), Ok(()));
    assert_eq!(
        mem.flushes,
        before + 1,
        "stale writable TLB entries flushed"
    );
    // After the caller's own flush, no extra one.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 41, ent(12, P | W | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(upd(&mut ft, &mut mem, D1, 5, 41, 0), Ok(Flush::NEEDED));
    mem.tlb_time = ft.tlb_clock().tick();
    assert_eq!(ft.pin(&mut mem, D1, 12, 1), Ok(()));
    assert_eq!(mem.flushes, before + 1);
    // A devalidated table becoming writable is flushed too.
    assert_eq!(ft.unpin(&mut mem, D1, 12), Ok(()));
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 42, ent(12, P | W | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.flushes, before + 2);
    clean(&ft, &mem, &ext);
}

/// A type change reaches only the CPUs that have not completed a flush
/// begun after the frame's stamp.
#[test]
fn type_change_reaches_only_cpus_not_flushed_since_the_stamp() {
    world!(ft, mem, ext);
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 40, ent(11, P | W | U)),
        Ok(Flush::NONE)
    );
    // CPU 1 flushed before the mapping went; CPU 3 starts a flush before
    // it goes and publishes its time after; CPU 2 flushes after.
    let early = ft.tlb_clock().tick();
    let during = ft.tlb_clock().tick();
    assert_eq!(upd(&mut ft, &mut mem, D1, 5, 40, 0), Ok(Flush::NEEDED));
    let after = ft.tlb_clock().tick();
    mem.remote = vec![(early, 0), (after, 0), (during, 0)];
    mem.tlb_time = ft.tlb_clock().tick();
    let before = mem.flushes;
    assert_eq!(ft.pin(&mut mem, D1, 11, 1), Ok(()));
    assert_eq!(mem.flushes, before, "this CPU flushed since the stamp");
    let flushed: Vec<u32> = mem.remote.iter().map(|r| r.1).collect();
    assert_eq!(flushed, vec![1, 0, 1], "CPUs 1 and 3 flushed, 2 not");
    clean(&ft, &mem, &ext);
}

#[test]
fn preserve_ad_keeps_hardware_bits() {
    world!(ft, mem, ext);
    let cur = mem.read(5, 0);
    mem.write(5, 0, cur | A | D);
    assert_eq!(
        ft.mod_entry(&mut mem, D1, D1, ma(5, 0), ent(6, P | W | U | NX), true),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(5, 0), ent(6, P | W | U | NX | A | D));
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 0, ent(6, P | W | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(5, 0), ent(6, P | W | U));
    // Full path too.
    mem.write(5, 0, ent(6, P | W | U | A | D));
    assert_eq!(
        ft.mod_entry(&mut mem, D1, D1, ma(5, 0), ent(11, P | W | U), true),
        Ok(Flush::NEEDED)
    );
    assert_eq!(mem.read(5, 0), ent(11, P | W | U | A | D));
    clean(&ft, &mem, &ext);
}

/// A memory where a CPU's page walk sets `bits` in the entry at `at` just
/// before the policy's first compare-exchange of it (after the policy read
/// the entry).
struct WalkRace<'a> {
    mem: &'a mut Mem,
    at: (u64, usize),
    bits: u64,
    raced: bool,
}

impl TableMemory for WalkRace<'_> {
    fn read(&self, mfn: u64, idx: usize) -> u64 {
        self.mem.read(mfn, idx)
    }
    fn write(&mut self, mfn: u64, idx: usize, val: u64) {
        self.mem.write(mfn, idx, val);
    }
    fn compare_exchange(&mut self, mfn: u64, idx: usize, old: u64, val: u64) -> u64 {
        if (mfn, idx) == self.at && !self.raced {
            self.raced = true;
            let cur = self.mem.read(mfn, idx);
            self.mem.write(mfn, idx, cur | self.bits);
        }
        let cur = self.mem.read(mfn, idx);
        if cur == old {
            self.mem.write(mfn, idx, val);
        }
        cur
    }
    fn flush_tlbs(&mut self, req: FlushRequest<'_>) {
        self.mem.flush_tlbs(req);
    }
}

/// PRESERVE_AD keeps a dirty bit the CPU sets after the entry was read
/// (Xen's compare-exchange loop); a plain update still replaces the bits.
#[test]
fn preserve_ad_keeps_bits_set_during_the_update() {
    world!(ft, mem, ext);
    let cur = mem.read(5, 0);
    mem.write(5, 0, (cur & !D) | A);
    for new in [ent(6, P | W | U | NX), ent(11, P | W | U)] {
        let mut racing = WalkRace {
            mem: &mut mem,
            at: (5, 0),
            bits: D,
            raced: false,
        };
        assert!(
            ft.mod_entry(&mut racing, D1, D1, ma(5, 0), new, true)
                .is_ok()
        );
        assert!(racing.raced);
        assert_eq!(mem.read(5, 0), new | A | D, "{new:#x}");
        mem.write(5, 0, mem.read(5, 0) & !D);
    }
    clean(&ft, &mem, &ext);
}

#[test]
fn fast_path_keeps_references() {
    world!(ft, mem, ext);
    let before = info(&ft, 6);
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 0, ent(6, P | W | NX | G)),
        Ok(Flush::NONE)
    );
    assert_eq!(info(&ft, 6).count(), before.count());
    assert_eq!(info(&ft, 6).type_count(), before.type_count());
    clean(&ft, &mem, &ext);
}

#[test]
fn types_are_exclusive() {
    world!(ft, mem, ext);
    assert_eq!(ft.pin(&mut mem, D1, 6, 1), Err(Errno::EINVAL));
    assert_eq!(
        ft.get_page_type(&mut mem, 6, PageType::L1, D1),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.get_page_type(&mut mem, 6, PageType::Segment, D1),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.get_page_type(&mut mem, 6, PageType::None, D1),
        Err(Errno::EINVAL)
    );
    clean(&ft, &mem, &ext);
    assert_eq!(upd(&mut ft, &mut mem, D1, 5, 0, 0), Ok(Flush::NEEDED));
    assert_eq!(ft.pin(&mut mem, D1, 6, 1), Ok(()));
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 0, ent(6, P | W | U)),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 0, ent(6, P | U)),
        Ok(Flush::NONE)
    );
    clean(&ft, &mem, &ext);
}

#[test]
fn segment_pages_and_external_references() {
    world!(ft, mem, mut_ext);
    let mut ext = mut_ext;
    assert_eq!(
        ft.get_page_and_type(&mut mem, 16, PageType::Segment, D1),
        Ok(())
    );
    ext.push((16, ExternalRef::PageAndType(PageType::Segment)));
    clean(&ft, &mem, &ext);
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 40, ent(16, P | W | U)),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 40, ent(16, P | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(
        ft.mod_entry(&mut mem, D1, D1, ma(16, 0), 5, false),
        Err(Errno::EINVAL)
    );
    clean(&ft, &mem, &ext);
    ft.put_page_and_type(&mut mem, 16);
    ext.pop();
    clean(&ft, &mem, &ext);
    // A general reference alone keeps a frame from being released.
    assert_eq!(ft.get_page(17, D1), Ok(()));
    assert_eq!(ft.get_page(36, D1), Err(Errno::EINVAL));
    ext.push((17, ExternalRef::Page));
    clean(&ft, &mem, &ext);
    assert_eq!(ft.release(17, D1), Err(Errno::EBUSY));
    ft.put_page(17);
    ext.pop();
    assert_eq!(ft.release(17, D1), Ok(()));
    clean(&ft, &mem, &ext);
}

#[test]
fn plain_writes_to_non_table_frames() {
    world!(ft, mem, ext);
    assert_eq!(
        ft.mod_entry(&mut mem, D1, D1, ma(16, 3), 0xdead_beef, false),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(16, 3), 0xdead_beef);
    assert_eq!(info(&ft, 16).type_count(), 0);
    assert_eq!(
        ft.mod_entry(&mut mem, D1, D1, ma(6, 3), 0x1234, false),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(6, 3), 0x1234);
    clean(&ft, &mem, &ext);
}

#[test]
fn malformed_requests_are_refused() {
    world!(ft, mem, ext);
    for bad_ma in [ma(5, 0) + 4, ma(5, 0) + 1, ma(1000, 0), !7u64] {
        assert_eq!(
            ft.mod_entry(&mut mem, D1, D1, bad_ma, 0, false),
            Err(Errno::EINVAL)
        );
    }
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 35, 0, 0),
        Err(Errno::EINVAL),
        "D2's table"
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 0, 0, 0),
        Err(Errno::EINVAL),
        "hypervisor frame"
    );
    assert_eq!(
        upd(&mut ft, &mut mem, OWNER_XEN, 0, 0, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(ft.assign(5, D2), Err(Errno::EBUSY));
    assert_eq!(ft.assign(1000, D2), Err(Errno::EINVAL));
    assert_eq!(ft.assign(5, OWNER_XEN), Err(Errno::EINVAL));
    assert_eq!(ft.reserve_for_hypervisor(5), Err(Errno::EBUSY));
    clean(&ft, &mem, &ext);
}

#[test]
fn update_va_mapping_walks_the_current_tables() {
    world!(ft, mem, ext);
    let va = 5 << 12;
    assert_eq!(
        ft.update_va_mapping(&mut mem, D1, D1, 2, va, ent(11, P | W | U)),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(5, 5), ent(11, P | W | U));
    clean(&ft, &mem, &ext);
    for bad_va in [1u64 << 47, 0xFFFF_8000_0000_0000, 1 << 39, 1 << 30, 1 << 21] {
        assert_eq!(
            ft.update_va_mapping(&mut mem, D1, D1, 2, bad_va, ent(11, P | U)),
            Err(Errno::EINVAL),
            "{bad_va:#x}"
        );
    }
    assert_eq!(
        ft.update_va_mapping(&mut mem, D1, D1, 32, va, 0),
        Err(Errno::EINVAL),
        "D2's L4"
    );
    assert_eq!(
        ft.update_va_mapping(&mut mem, D1, D1, 3, va, 0),
        Err(Errno::EINVAL),
        "not an L4"
    );
    assert_eq!(
        ft.update_va_mapping(&mut mem, D1, D1, 2, va, ent(36, P | U)),
        Err(Errno::EBUSY)
    );
    clean(&ft, &mem, &ext);
    // A walk through a read-only linear entry ends in a table that is not an L1.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 2, 1, ent(2, P | U)),
        Ok(Flush::NONE)
    );
    let through_self = (1u64 << 39) | (1 << 30) | (1 << 21);
    assert_eq!(
        ft.update_va_mapping(&mut mem, D1, D1, 2, through_self, 0),
        Err(Errno::EINVAL)
    );
    clean(&ft, &mem, &ext);
}

#[test]
fn machphys_update_needs_ownership() {
    world!(ft, _mem, _ext);
    assert_eq!(ft.check_machphys_update(D1, 6), Ok(()));
    assert_eq!(ft.check_machphys_update(D1, 36), Err(Errno::EINVAL));
    assert_eq!(ft.check_machphys_update(D1, 0), Err(Errno::EINVAL));
    assert_eq!(ft.check_machphys_update(D1, 1000), Err(Errno::EINVAL));
}

#[test]
fn audit_detects_corruption() {
    world!(ft, mem, ext);
    ft.pages[6].c.fetch_add(1, Ordering::SeqCst);
    assert_eq!(
        audit(&ft, &mem, &ext).map_err(|e| (e.mfn, e.kind)),
        Err((
            6,
            AuditErrorKind::GeneralCount {
                stored: 3,
                expected: 2
            }
        ))
    );
    ft.pages[6].c.fetch_sub(1, Ordering::SeqCst);
    clean(&ft, &mem, &ext);
    // An entry written behind the policy's back.
    let saved = mem.read(5, 4);
    mem.write(5, 4, ent(4, P | W | U));
    assert!(matches!(
        audit(&ft, &mem, &ext),
        Err(AuditError {
            mfn: 5,
            kind: AuditErrorKind::BadEntry { index: 4, .. }
        })
    ));
    mem.write(5, 4, saved);
    clean(&ft, &mem, &ext);
    // A forgotten external reference.
    assert!(audit(&ft, &mem, &ext[..1]).is_err());
    assert!(audit(&ft, &mem, &[(2, BASE), (32, BASE), (6, ExternalRef::Page)]).is_err());
}

// ----------------------------------------------------------------------
// Grant entries (bit 62): installed and removed only through the grant
// calls; their references are the mapping's, declared as external.
// ----------------------------------------------------------------------

/// D1 maps D2's frame 36 writable by grant at L1 5 entry 30: the mapping's
/// references (general + writable type) are taken as map_grant_ref does.
fn grant_map_36(ft: &mut FrameTable<'_>, mem: &mut Mem, ext: &mut Ext) -> u64 {
    ft.get_page(36, D2).unwrap();
    ft.get_page_type(mem, 36, PageType::Writable, D2).unwrap();
    ext.push((36, ExternalRef::PageAndType(PageType::Writable)));
    let g = ent(36, P | W | U | A | D | NX | BIT62);
    assert_eq!(
        ft.install_grant_entry(mem, D1, ma(5, 30), g),
        Ok(Flush::NONE)
    );
    g
}

#[test]
fn grant_entry_holds_no_references_and_audits_clean() {
    world!(ft, mem, ext);
    let before = info(&ft, 36).count();
    let g = grant_map_36(&mut ft, &mut mem, &mut ext);
    assert_eq!(mem.read(5, 30), g);
    assert_eq!(
        info(&ft, 36).count(),
        before + 1,
        "only the mapping's reference"
    );
    clean(&ft, &mem, &ext);
    // Found through the page tables as host_addr would be.
    let va = 30u64 << 12;
    assert_eq!(ft.find_l1_entry(&mem, D1, 2, va), Ok(ma(5, 30)));
    assert_eq!(
        ft.remove_grant_entry(&mut mem, D1, ma(5, 30), g),
        Ok(Flush::NEEDED)
    );
    assert_eq!(mem.read(5, 30), 0);
    ft.put_page_type(&mut mem, 36);
    ft.put_page(36);
    ext.pop();
    clean(&ft, &mem, &ext);
}

#[test]
fn guest_cannot_overwrite_or_forge_a_grant_entry() {
    world!(ft, mem, ext);
    let g = grant_map_36(&mut ft, &mut mem, &mut ext);
    // Clearing it, changing only whitelisted bits, or remapping: refused.
    assert_eq!(upd(&mut ft, &mut mem, D1, 5, 30, 0), Err(Errno::EINVAL));
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 30, g & !BIT62),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 30, ent(11, P | W)),
        Err(Errno::EINVAL)
    );
    // Writing the tag itself anywhere is refused.
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 5, 31, ent(11, P | BIT62)),
        Err(Errno::EINVAL)
    );
    assert_eq!(mem.read(5, 30), g);
    clean(&ft, &mem, &ext);
    // A second grant over it is refused; removal with another value too.
    assert_eq!(
        ft.install_grant_entry(&mut mem, D1, ma(5, 30), g),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        ft.remove_grant_entry(&mut mem, D1, ma(5, 30), g & !pte::RW),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.remove_grant_entry(&mut mem, D1, ma(5, 31), g),
        Err(Errno::EINVAL)
    );
    // Not an L1 of D1 / misaligned / not a grant value.
    assert_eq!(
        ft.install_grant_entry(&mut mem, D1, ma(35, 30), g),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.install_grant_entry(&mut mem, D1, ma(4, 30), g),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.install_grant_entry(&mut mem, D1, ma(5, 31) | 4, g),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.install_grant_entry(&mut mem, D1, ma(5, 31), g & !BIT62),
        Err(Errno::EINVAL)
    );
    clean(&ft, &mem, &ext);
}

#[test]
fn grant_entry_replaces_an_ordinary_one_dropping_its_references() {
    world!(ft, mem, ext);
    assert!(upd(&mut ft, &mut mem, D1, 5, 30, ent(11, P | W)).is_ok());
    let before = info(&ft, 11);
    assert_eq!((before.count(), before.type_count()), (2, 1));
    ft.get_page(36, D2).unwrap();
    ext.push((36, ExternalRef::Page));
    let g = ent(36, P | U | A | D | NX | BIT62);
    assert_eq!(
        ft.install_grant_entry(&mut mem, D1, ma(5, 30), g),
        Ok(Flush::NEEDED)
    );
    let after = info(&ft, 11);
    assert_eq!((after.count(), after.type_count()), (1, 0));
    clean(&ft, &mem, &ext);
}

#[test]
fn teardown_skips_grant_entries() {
    world!(ft, mem, ext);
    let _ = grant_map_36(&mut ft, &mut mem, &mut ext);
    let count = info(&ft, 36).count();
    // D1 drops its base pointer: the whole tree is devalidated, the grant
    // entry's references stay (they are the mapping's).
    ft.put_page_and_type(&mut mem, 2);
    ext.retain(|&(m, _)| m != 2);
    assert_eq!(info(&ft, 36).count(), count);
    clean(&ft, &mem, &ext);
    // Revalidating an L1 that still holds a grant entry is refused.
    assert_eq!(ft.pin(&mut mem, D1, 5, 1), Err(Errno::EINVAL));
    clean(&ft, &mem, &ext);
}

// ----------------------------------------------------------------------
// I/O memory (frames outside the table) for a domain allowed device access.
// ----------------------------------------------------------------------

#[test]
fn io_memory_only_for_allowed_domains_and_frames() {
    world!(ft, mem, ext);
    let io = N as u64 + 100;
    let e = ent(io, P | W | PCD | PWT);
    // Nobody is allowed yet; privileged requests name DOMID_IO.
    assert_eq!(
        ft.mod_entry(&mut mem, D1, DOMID_IO, ma(5, 40), e, false),
        Err(Errno::EPERM)
    );
    ft.allow_io(D1).unwrap();
    assert_eq!(
        ft.mod_entry(&mut mem, D1, DOMID_IO, ma(5, 40), e, false),
        Ok(Flush::NONE)
    );
    assert_eq!(mem.read(5, 40), e | U | pte::GUEST_KERNEL);
    // Its own id works too (Xen: a domain with I/O-memory capabilities).
    assert_eq!(
        ft.mod_entry(&mut mem, D1, D1, ma(5, 41), ent(io + 1, P | PCD), false),
        Ok(Flush::NONE)
    );
    clean(&ft, &mem, &ext);
    // Another domain may not; a PAT/PSE bit is still refused; so is an
    // I/O frame in an upper-level entry.
    assert_eq!(
        ft.mod_entry(&mut mem, D2, DOMID_IO, ma(35, 40), e, false),
        Err(Errno::EPERM)
    );
    assert_eq!(
        ft.mod_entry(&mut mem, D1, DOMID_IO, ma(5, 42), ent(io, P | PSE), false),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.mod_entry(&mut mem, D1, D1, ma(4, 42), ent(io, P | W), false),
        Err(Errno::EINVAL)
    );
    // Denied frames (the hypervisor's devices) stay out of reach.
    ft.deny_io(io + 5, io + 6).unwrap();
    assert_eq!(
        ft.mod_entry(
            &mut mem,
            D1,
            DOMID_IO,
            ma(5, 43),
            ent(io + 5, P | W | PCD),
            false
        ),
        Err(Errno::EPERM)
    );
    // Unmapping takes no references away; the table revalidates.
    assert!(upd(&mut ft, &mut mem, D1, 5, 40, 0).is_ok());
    assert!(ft.pin(&mut mem, D1, 5, 1).is_ok());
    clean(&ft, &mem, &ext);
    assert_eq!(resolve_pg_owner(D1, DOMID_IO, false), Err(Errno::EPERM));
    assert_eq!(resolve_pg_owner(D1, DOMID_IO, true), Ok(DOMID_IO));
}

// ------------------------------------------------- hypervisor-written frames

/// A frame the hypervisor writes on its own (shared info, a console ring, a
/// grant-table frame) holds a write reference: it stays writable-typed, so
/// it can be neither pinned at any level, nor linked into a table, nor
/// become a descriptor page, nor be given back, until the reference goes.
#[test]
fn hypervisor_written_frame_never_takes_another_type() {
    world!(ft, mem, ext);
    let f = 11; // a spare frame of D1, unmapped
    ft.get_hv_writable(&mut mem, f, D1).unwrap();
    ext.push((f, ExternalRef::HvWritable));
    assert_eq!(info(&ft, f).page_type(), PageType::Writable);
    assert_eq!(info(&ft, f).hv_writers(), 1);
    clean(&ft, &mem, &ext);
    for level in 1..=4 {
        assert_eq!(
            ft.pin(&mut mem, D1, f, level),
            Err(Errno::EINVAL),
            "pin as L{level}"
        );
    }
    assert_eq!(
        ft.get_page_and_type(&mut mem, f, PageType::Segment, D1),
        Err(Errno::EINVAL)
    );
    // Linked into the L2 as an L1 table: refused (Xen: EINVAL).
    assert_eq!(
        upd(&mut ft, &mut mem, D1, 4, 7, ent(f, P | W | U)),
        Err(Errno::EINVAL)
    );
    // The guest may still map it writable (it shares the writable type).
    let _ = upd(&mut ft, &mut mem, D1, 5, 20, ent(f, P | W | U)).unwrap();
    assert_eq!(ft.release(f, D1), Err(Errno::EBUSY));
    clean(&ft, &mem, &ext);
    let _ = upd(&mut ft, &mut mem, D1, 5, 20, 0).unwrap();
    // Other types stay refused while the write reference alone is held.
    assert_eq!(ft.pin(&mut mem, D1, f, 1), Err(Errno::EINVAL));
    // Once the hypervisor lets go the frame is an ordinary page again.
    ft.put_hv_writable(&mut mem, f);
    ext.pop();
    assert_eq!(info(&ft, f).hv_writers(), 0);
    assert_eq!(info(&ft, f).type_count(), 0);
    clean(&ft, &mem, &ext);
    ft.pin(&mut mem, D1, f, 1).unwrap();
    clean(&ft, &mem, &ext);
    // ...and a frame that is a page table cannot become hypervisor-written.
    assert_eq!(ft.get_hv_writable(&mut mem, f, D1), Err(Errno::EINVAL));
    assert_eq!(info(&ft, f).hv_writers(), 0);
    // Nor can another domain's frame.
    assert_eq!(ft.get_hv_writable(&mut mem, 41, D1), Err(Errno::EINVAL));
    clean(&ft, &mem, &ext);
}

/// Several write references on one frame (e.g. two areas a guest registers
/// in the same page) each hold the writable type until the last goes.
#[test]
fn hypervisor_write_references_count() {
    world!(ft, mem, ext);
    let f = 12;
    ft.get_hv_writable(&mut mem, f, D1).unwrap();
    ft.get_hv_writable(&mut mem, f, D1).unwrap();
    ext.push((f, ExternalRef::HvWritable));
    ext.push((f, ExternalRef::HvWritable));
    clean(&ft, &mem, &ext);
    ft.put_hv_writable(&mut mem, f);
    ext.pop();
    assert_eq!(ft.pin(&mut mem, D1, f, 1), Err(Errno::EINVAL));
    clean(&ft, &mem, &ext);
    ft.put_hv_writable(&mut mem, f);
    ext.pop();
    // A put without a reference changes nothing.
    ft.put_hv_writable(&mut mem, f);
    assert_eq!(info(&ft, f).count(), 1);
    clean(&ft, &mem, &ext);
}

/// The audit catches a frame the hypervisor writes that is not
/// writable-typed: here the escape the rule exists for, a hypervisor that
/// held only a general reference on a page it writes while the guest pinned
/// that page as an L1 table.
#[test]
fn audit_catches_hypervisor_written_frame_that_is_not_writable() {
    world!(ft, mem, ext);
    let f = 13;
    // The old, wrong discipline: a plain reference.
    ft.get_page(f, D1).unwrap();
    assert_eq!(ft.pin(&mut mem, D1, f, 1), Ok(()));
    ext.push((f, ExternalRef::HvWritable));
    assert_eq!(
        audit(&ft, &mem, &ext).map_err(|e| e.kind),
        Err(AuditErrorKind::HypervisorWritten("not writable-typed"))
    );
}

/// The audit recounts the write references: a frame whose recorded count
/// differs from the references the hypervisor declares, or whose own state
/// says it is hypervisor-written but not writable-typed, is a failure.
#[test]
fn audit_recounts_hypervisor_write_references() {
    world!(ft, mem, ext);
    let f = 14;
    ft.get_hv_writable(&mut mem, f, D1).unwrap();
    // Declared as an ordinary writable reference: same general and type
    // counts, but not recorded as what it is.
    ext.push((f, ExternalRef::PageAndType(PageType::Writable)));
    assert_eq!(
        audit(&ft, &mem, &ext).map_err(|e| e.kind),
        Err(AuditErrorKind::HypervisorWritten(
            "write references recorded differ from those declared"
        ))
    );
    ext.pop();
    ext.push((f, ExternalRef::HvWritable));
    clean(&ft, &mem, &ext);
    // A corrupted frame: write references on a page-table type.
    let p = &ft.pages[usize::try_from(f).unwrap()];
    p.t.store(
        page::t_with_type(p.t.load(Ordering::SeqCst), PageType::L1),
        Ordering::SeqCst,
    );
    assert_eq!(
        audit(&ft, &mem, &ext)
            .map(|()| 0)
            .map_err(|e| (e.mfn, e.kind)),
        Err((f, AuditErrorKind::HypervisorWritten("not writable-typed")))
    );
}

/// A descriptor page (GDT or LDT) is validated whole when it first takes
/// the segment type: one descriptor a guest may not hold anywhere in its
/// 512 (a TSS, a call gate to the hypervisor's code selector), and the
/// type is refused with `EINVAL`, leaving the frame untyped; a page of
/// valid ones is accepted, with DPL-0 segments raised to DPL 3 and call
/// gates given DPL 0 and a target RPL of 3, in place (Xen).
#[test]
fn descriptor_pages_are_validated_whole() {
    world!(ft, mem, mut_ext);
    let mut ext = mut_ext;
    let f = 18;
    mem.write(f, 1, 0x00cf_f200_0000_ffff); // DPL-3 data
    mem.write(f, 2, 0x00af_9a00_0000_ffff); // DPL-0 code
    mem.write(f, 4, 0x0000_ec00_0008_1000); // DPL-3 call gate to 0x08
    mem.write(f, 5, 0); // its second half
    for (idx, bad) in [
        (511, 0x0000_e900_0000_0067u64),
        (300, 0x0000_ec00_e008_0000),
    ] {
        mem.write(f, idx, bad);
        assert_eq!(
            ft.get_page_and_type(&mut mem, f, PageType::Segment, D1),
            Err(Errno::EINVAL)
        );
        clean(&ft, &mem, &ext);
        mem.write(f, idx, 0);
    }
    assert_eq!(
        ft.get_page_and_type(&mut mem, f, PageType::Segment, D1),
        Ok(())
    );
    assert_eq!(mem.read(f, 2), 0x00af_fa00_0000_ffff);
    assert_eq!(mem.read(f, 1), 0x00cf_f200_0000_ffff);
    assert_eq!(mem.read(f, 4), 0x0000_8c00_000b_1000);
    ext.push((f, ExternalRef::PageAndType(PageType::Segment)));
    clean(&ft, &mem, &ext);
    // A second reference does not validate again, and needs no more.
    assert_eq!(
        ft.get_page_and_type(&mut mem, f, PageType::Segment, D1),
        Ok(())
    );
    ext.push((f, ExternalRef::PageAndType(PageType::Segment)));
    clean(&ft, &mem, &ext);
    ft.put_page_and_type(&mut mem, f);
    ft.put_page_and_type(&mut mem, f);
}

/// The audit re-checks every descriptor of a segment-typed page: one that
/// changed behind the frame table's back (a ring-0 code segment in an LDT
/// page) is an audit failure naming the entry.
#[test]
fn audit_catches_a_bad_descriptor_in_a_segment_page() {
    world!(ft, mem, mut_ext);
    let mut ext = mut_ext;
    let f = 19;
    assert_eq!(
        ft.get_page_and_type(&mut mem, f, PageType::Segment, D1),
        Ok(())
    );
    ext.push((f, ExternalRef::PageAndType(PageType::Segment)));
    clean(&ft, &mem, &ext);
    mem.write(f, 7, 0x00af_9a00_0000_ffff);
    assert!(matches!(
        audit(&ft, &mem, &ext).map_err(|e| e.kind),
        Err(AuditErrorKind::BadEntry {
            index: 7,
            entry: 0x00af_9a00_0000_ffff,
            ..
        })
    ));
    mem.write(f, 7, 0x0000_e900_0000_0067);
    assert!(matches!(
        audit(&ft, &mem, &ext).map_err(|e| e.kind),
        Err(AuditErrorKind::BadEntry { index: 7, .. })
    ));
    // A call gate ring 3 could pass through (DPL 3, not fixed up).
    mem.write(f, 7, 0x0000_ec00_000b_1000);
    assert!(matches!(
        audit(&ft, &mem, &ext).map_err(|e| e.kind),
        Err(AuditErrorKind::BadEntry { index: 7, .. })
    ));
    mem.write(f, 7, 0x0000_8c00_000b_1000);
    clean(&ft, &mem, &ext);
}

/// unmap_and_replace's page-table half: the grant entry is replaced by the
/// entry of another slot, which is cleared; the moved entry keeps its
/// references (same counts, audit clean once the grant's own references
/// are dropped by the policy). Refused with nothing changed: the same
/// slot, a grant entry as the replacement, a grant value that is not there.
#[test]
fn grant_entry_replaced_by_another_slots_entry() {
    world!(ft, mem, ext);
    let g = grant_map_36(&mut ft, &mut mem, &mut ext);
    let moved = ent(11, P | W | U);
    assert!(upd(&mut ft, &mut mem, D1, 5, 31, moved).is_ok());
    let before = info(&ft, 11);
    assert_eq!(
        ft.replace_grant_entry(&mut mem, D1, ma(5, 30), g, ma(5, 30)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.replace_grant_entry(&mut mem, D1, ma(5, 30), g & !pte::RW, ma(5, 31)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.replace_grant_entry(&mut mem, D1, ma(5, 31), moved, ma(5, 30)),
        Err(Errno::EINVAL)
    );
    assert_eq!((mem.read(5, 30), mem.read(5, 31)), (g, moved));
    assert_eq!(
        ft.replace_grant_entry(&mut mem, D1, ma(5, 30), g, ma(5, 31)),
        Ok(Flush::NEEDED)
    );
    assert_eq!((mem.read(5, 30), mem.read(5, 31)), (moved, 0));
    let after = info(&ft, 11);
    assert_eq!(
        (after.count(), after.type_count()),
        (before.count(), before.type_count())
    );
    ft.put_page_type(&mut mem, 36);
    ft.put_page(36);
    ext.pop();
    clean(&ft, &mem, &ext);
}

#[test]
fn ptwr_compares_and_writes_under_the_lock() {
    world!(ft, mem, ext);
    let cur = mem.read(5, 0);
    let new = ent(11, P | W | U);
    // cmpxchg with a stale expected value: nothing written, the entry's
    // value handed back.
    assert_eq!(
        ft.ptwr_entry(&mut mem, D1, ma(5, 0), new, Some(cur ^ A)),
        Ok(PtwrOutcome::Differs(cur))
    );
    assert_eq!(mem.read(5, 0), cur);
    // With the value the entry holds: written, the old one reported.
    assert_eq!(
        ft.ptwr_entry(&mut mem, D1, ma(5, 0), new, Some(cur)),
        Ok(PtwrOutcome::Written {
            old: cur,
            flush: Flush::NEEDED
        })
    );
    assert_eq!(mem.read(5, 0), new);
    // A plain store (mov, xchg) reports the old value too.
    assert_eq!(
        ft.ptwr_entry(&mut mem, D1, ma(5, 0), cur, None),
        Ok(PtwrOutcome::Written {
            old: new,
            flush: Flush::NEEDED
        })
    );
    assert_eq!(mem.read(5, 0), cur);
    // Refused as before: not an L1 table, or a new entry the checks refuse
    // (the expected value matching changes nothing).
    let l2e = mem.read(4, 0);
    assert_eq!(
        ft.ptwr_entry(&mut mem, D1, ma(4, 0), 0, Some(l2e)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ft.ptwr_entry(&mut mem, D1, ma(6, 0), 0, Some(0)),
        Err(Errno::EINVAL)
    );
    assert!(
        ft.ptwr_entry(&mut mem, D1, ma(5, 0), ent(2, P | W | U), Some(cur))
            .is_err()
    );
    assert_eq!(mem.read(5, 0), cur);
    clean(&ft, &mem, &ext);
}
