//! The frame-table audit: recomputes every general, type and linear count
//! from first principles (allocation references, pins, references the caller
//! declares, and every entry of every validated table) and compares them with
//! the stored ones, checking each frame's own invariants and each live entry
//! against the rules on the way. It only reads. The recomputed counts go
//! into a scratch buffer of [`AuditTally`] the caller lends (a small stack
//! buffer for [`FrameTable::audit`]); the tables are walked once per chunk of
//! target frames that fits in it, so a larger buffer means fewer walks.
//!
//! The audit reads each frame's words with plain loads and assumes no
//! frame-table operation is in flight on any CPU (the caller stops them);
//! a frame left locked or busy is an error.

use core::fmt;

use super::page::{F_BUSY, F_DYING, F_LOCKED, F_PINNED, F_STALE, F_VALIDATED};
use super::{
    ENTRIES, ExternalRef, FrameTable, HV_L4_FIRST, OWNER_FREE, OWNER_XEN, PageInfo, PageType, Snap,
    TableMemory, is_domain, is_hv_slot, pte,
};

/// Target frames counted per pass over the tables by [`FrameTable::audit`].
const CHUNK: usize = 64;

/// A frame whose stored state disagrees with what the live tables imply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditError {
    /// The frame concerned.
    pub mfn: u64,
    /// What is wrong with it.
    pub kind: AuditErrorKind,
}

/// The kind of an [`AuditError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditErrorKind {
    /// The frame's own fields contradict each other.
    BadState(&'static str),
    /// The general reference count differs from the recomputed one.
    GeneralCount {
        /// Stored count.
        stored: u32,
        /// Recomputed count.
        expected: u64,
    },
    /// The type count differs from the recomputed one.
    TypeCount {
        /// Stored count.
        stored: u32,
        /// Recomputed count.
        expected: u64,
    },
    /// The linear-mapping balance is wrong, or the frame both holds linear
    /// entries and is the target of some.
    LinearCount {
        /// Stored balance (entries held minus uses by others).
        stored: i16,
        /// Linear entries the table holds.
        entries: u64,
        /// Linear entries of other tables naming it.
        uses: u64,
    },
    /// An entry of this validated table breaks a rule.
    BadEntry {
        /// Entry index.
        index: usize,
        /// Entry value.
        entry: u64,
        /// The rule broken.
        why: &'static str,
    },
    /// A reference the caller declared cannot be held on this frame.
    BadExternal(&'static str),
    /// A frame the hypervisor writes on its own is not held writable-typed
    /// (it could become a page table, GDT or LDT frame), or its count of
    /// hypervisor write references differs from the ones declared.
    HypervisorWritten(&'static str),
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame {:#x}: ", self.mfn)?;
        match self.kind {
            AuditErrorKind::BadState(why) => write!(f, "bad state: {why}"),
            AuditErrorKind::GeneralCount { stored, expected } => {
                write!(f, "general count {stored}, expected {expected}")
            }
            AuditErrorKind::TypeCount { stored, expected } => {
                write!(f, "type count {stored}, expected {expected}")
            }
            AuditErrorKind::LinearCount {
                stored,
                entries,
                uses,
            } => write!(
                f,
                "linear balance {stored}, found {entries} entries and {uses} uses"
            ),
            AuditErrorKind::BadEntry { index, entry, why } => {
                write!(f, "entry {index} = {entry:#x}: {why}")
            }
            AuditErrorKind::BadExternal(why) => write!(f, "external reference: {why}"),
            AuditErrorKind::HypervisorWritten(why) => write!(f, "hypervisor-written frame: {why}"),
        }
    }
}

/// Recomputed counts of one frame: scratch space for
/// [`FrameTable::audit_with`] (20 bytes each).
#[derive(Clone, Copy, Default, Debug)]
pub struct AuditTally {
    general: u32,
    ty: u32,
    lin_entries: u32,
    lin_uses: u32,
    hv_writers: u32,
}

impl AuditTally {
    /// An empty tally, for initialising a static scratch buffer.
    pub const ZERO: Self = Self {
        general: 0,
        ty: 0,
        lin_entries: 0,
        lin_uses: 0,
        hv_writers: 0,
    };
}

type Tally = AuditTally;

fn bump(n: &mut u32) {
    *n = n.saturating_add(1);
}

/// The tally of `mfn` when it lies in `base..base + len`.
fn tally_at(tally: &mut [Tally], base: u64, len: u64, mfn: u64) -> Option<&mut Tally> {
    let off = mfn.checked_sub(base).filter(|&o| o < len)?;
    tally.get_mut(usize::try_from(off).ok()?)
}

const fn err(mfn: u64, kind: AuditErrorKind) -> AuditError {
    AuditError { mfn, kind }
}

const fn bad_state(mfn: u64, why: &'static str) -> AuditError {
    err(mfn, AuditErrorKind::BadState(why))
}

/// The level of a table whose entries hold references (validated, in use).
fn live_level(p: &Snap) -> Option<u8> {
    if p.is_validated() && p.type_count > 0 {
        p.table_level()
    } else {
        None
    }
}

impl FrameTable<'_> {
    /// Checks every frame's invariants and recomputes every count from the
    /// allocation references, the pins, `external` (each reference the caller
    /// holds, e.g. every vCPU's base pointer as
    /// `(l4, ExternalRef::PageAndType(PageType::L4))`) and every entry of
    /// every validated table. Returns the first mismatch.
    pub fn audit<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        external: &[(u64, ExternalRef)],
    ) -> Result<(), AuditError> {
        let mut scratch = [Tally::ZERO; CHUNK];
        self.audit_with(mem, external, &mut scratch)
    }

    /// [`FrameTable::audit`] with the caller's scratch buffer: the tables
    /// are walked once per `scratch.len()` frames (once in all when it holds
    /// one tally per frame). The result does not depend on the size.
    pub fn audit_with<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        external: &[(u64, ExternalRef)],
        scratch: &mut [AuditTally],
    ) -> Result<(), AuditError> {
        let chunk = scratch.len() as u64;
        if scratch.is_empty() {
            return self.audit(mem, external);
        }
        for (mfn, p) in (0u64..).zip(self.pages.iter().map(PageInfo::snap)) {
            check_state(mfn, &p)?;
        }
        for &(mfn, r) in external {
            self.check_external(mfn, r)?;
        }
        for (mfn, p) in (0u64..).zip(self.pages.iter()) {
            if let Some(level) = p.live_level() {
                let owner = p.snap().owner;
                for idx in 0..ENTRIES {
                    self.check_entry(mem, mfn, owner, level, idx)?;
                }
            }
        }
        let n = self.nr_frames();
        let mut base = 0u64;
        while base < n {
            let len = n.saturating_sub(base).min(chunk);
            self.audit_chunk(mem, external, base, len, scratch)?;
            base = base.saturating_add(len);
        }
        Ok(())
    }

    /// Recomputes and compares the counts of frames `base..base + len`.
    fn audit_chunk<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        external: &[(u64, ExternalRef)],
        base: u64,
        len: u64,
        tally: &mut [Tally],
    ) -> Result<(), AuditError> {
        tally.fill(Tally::ZERO);
        for mfn in base..base + len {
            let (Some(p), Some(t)) = (self.snap(mfn), tally_at(tally, base, len, mfn)) else {
                continue;
            };
            if is_domain(p.owner) && !p.is_dying() {
                bump(&mut t.general);
            }
            if p.is_pinned() {
                bump(&mut t.general);
                bump(&mut t.ty);
            }
        }
        for &(mfn, r) in external {
            if let Some(t) = tally_at(tally, base, len, mfn) {
                match r {
                    ExternalRef::Page => t.general += 1,
                    ExternalRef::Type(_) => t.ty += 1,
                    ExternalRef::PageAndType(_) => {
                        bump(&mut t.general);
                        bump(&mut t.ty);
                    }
                    ExternalRef::HvWritable => {
                        bump(&mut t.general);
                        bump(&mut t.ty);
                        bump(&mut t.hv_writers);
                    }
                }
            }
        }
        for (table, p) in (0u64..).zip(self.pages.iter()) {
            let Some(level) = p.live_level() else {
                continue;
            };
            for idx in 0..ENTRIES {
                if level == 4 && is_hv_slot(idx) {
                    continue;
                }
                let e = mem.read(table, idx);
                if !pte::present(e) {
                    continue;
                }
                let target = pte::frame(e);
                if level == 1 && pte::is_grant(e) {
                    continue;
                }
                if level == 1 {
                    if let Some(t) = tally_at(tally, base, len, target) {
                        bump(&mut t.general);
                        if pte::writable(e) {
                            bump(&mut t.ty);
                        }
                    }
                    continue;
                }
                if target == table {
                    continue;
                }
                let linear = self.pg(target).and_then(PageInfo::type_level) == Some(level);
                if let Some(t) = tally_at(tally, base, len, target) {
                    bump(&mut t.general);
                    bump(&mut t.ty);
                    if linear {
                        bump(&mut t.lin_uses);
                    }
                }
                if linear && let Some(t) = tally_at(tally, base, len, table) {
                    bump(&mut t.lin_entries);
                }
            }
        }
        for mfn in base..base + len {
            let (Some(p), Some(t)) = (self.snap(mfn), tally_at(tally, base, len, mfn)) else {
                continue;
            };
            if p.count != t.general {
                return Err(err(
                    mfn,
                    AuditErrorKind::GeneralCount {
                        stored: p.count,
                        expected: u64::from(t.general),
                    },
                ));
            }
            if p.type_count != t.ty {
                return Err(err(
                    mfn,
                    AuditErrorKind::TypeCount {
                        stored: p.type_count,
                        expected: u64::from(t.ty),
                    },
                ));
            }
            if u32::from(p.hv_writers) != t.hv_writers {
                return Err(err(
                    mfn,
                    AuditErrorKind::HypervisorWritten(
                        "write references recorded differ from those declared",
                    ),
                ));
            }
            if p.page_type() == PageType::Segment && p.is_validated() {
                // A descriptor page the CPU may read as a GDT or LDT holds
                // only descriptors a guest may have.
                if let Some(index) =
                    (0..ENTRIES).find(|&i| !crate::pv::descriptor_ok(mem.read(mfn, i)))
                {
                    return Err(err(
                        mfn,
                        AuditErrorKind::BadEntry {
                            index,
                            entry: mem.read(mfn, index),
                            why: "descriptor a guest may not hold in a GDT or LDT page",
                        },
                    ));
                }
            }
            let balance = i128::from(t.lin_entries) - i128::from(t.lin_uses);
            if (t.lin_entries > 0 && t.lin_uses > 0) || i128::from(p.linear) != balance {
                return Err(err(
                    mfn,
                    AuditErrorKind::LinearCount {
                        stored: p.linear,
                        entries: u64::from(t.lin_entries),
                        uses: u64::from(t.lin_uses),
                    },
                ));
            }
        }
        Ok(())
    }

    fn check_external(&self, mfn: u64, r: ExternalRef) -> Result<(), AuditError> {
        let bad = |why| Err(err(mfn, AuditErrorKind::BadExternal(why)));
        let Some(p) = self.snap(mfn) else {
            return bad("frame outside the table");
        };
        if !is_domain(p.owner) {
            return bad("frame not owned by a domain");
        }
        match r {
            ExternalRef::Page => Ok(()),
            ExternalRef::HvWritable => {
                if p.page_type() != PageType::Writable || p.type_count == 0 {
                    Err(err(
                        mfn,
                        AuditErrorKind::HypervisorWritten("not writable-typed"),
                    ))
                } else {
                    Ok(())
                }
            }
            ExternalRef::Type(ty) | ExternalRef::PageAndType(ty) => {
                if ty == PageType::None || p.page_type() != ty {
                    bad("type reference of the wrong type")
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Checks entry `idx` of live table `mfn` (owned by `owner`).
    fn check_entry<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        mfn: u64,
        owner: u16,
        level: u8,
        idx: usize,
    ) -> Result<(), AuditError> {
        let e = mem.read(mfn, idx);
        let bad = |why| {
            Err(err(
                mfn,
                AuditErrorKind::BadEntry {
                    index: idx,
                    entry: e,
                    why,
                },
            ))
        };
        if level == 4 && is_hv_slot(idx) {
            let want = idx
                .checked_sub(HV_L4_FIRST)
                .and_then(|i| self.hv_l4_slots.get(i));
            return if want == Some(&e) {
                Ok(())
            } else {
                bad("hypervisor slot differs from the template")
            };
        }
        if !pte::present(e) {
            return Ok(());
        }
        if level == 1 && pte::is_grant(e) {
            // A grant mapping: its references are the mapping's (declared by
            // the grant tables as external references), not the entry's.
            return match self.snap(pte::frame(e)) {
                Some(t) if is_domain(t.owner) => Ok(()),
                _ => bad("grant entry maps a free, hypervisor or unknown frame"),
            };
        }
        if level == 1 && self.snap(pte::frame(e)).is_none() {
            return if !self.io_allowed(owner, pte::frame(e)) {
                bad("maps I/O memory its domain may not map")
            } else if pte::disallowed_io(e) != 0 {
                bad("flag an I/O mapping forbids")
            } else {
                Ok(())
            };
        }
        if pte::disallowed(level, e) != 0 {
            return bad("flag the level forbids");
        }
        if e & pte::USER == 0 {
            return bad("USER not forced on");
        }
        let target = pte::frame(e);
        let Some(t) = self.snap(target) else {
            return bad("frame outside the table");
        };
        if level == 1 {
            if !is_domain(t.owner) {
                return bad("maps a free or hypervisor frame");
            }
            if pte::writable(e) && (t.page_type() != PageType::Writable || t.type_count == 0) {
                return bad("writable mapping of a frame not typed writable");
            }
            return Ok(());
        }
        if target == mfn {
            return if pte::writable(e) {
                bad("writable self-map")
            } else {
                Ok(())
            };
        }
        if t.owner != owner || t.is_dying() {
            return bad("names a table of another domain");
        }
        let tl = live_level(&t);
        if tl == Some(level - 1) {
            Ok(())
        } else if tl == Some(level) {
            if pte::writable(e) {
                bad("writable linear entry")
            } else {
                Ok(())
            }
        } else {
            bad("names a frame that is not a live table of the right level")
        }
    }
}

/// The invariants of one frame on its own.
fn check_state(mfn: u64, p: &Snap) -> Result<(), AuditError> {
    let Some(ty) = PageType::from_bits(p.ty) else {
        return Err(bad_state(mfn, "unknown type"));
    };
    if p.flags & !(F_VALIDATED | F_PINNED | F_STALE | F_DYING | F_LOCKED | F_BUSY) != 0 {
        return Err(bad_state(mfn, "unknown flag"));
    }
    if p.flags & (F_LOCKED | F_BUSY) != 0 {
        // The audit runs with no frame-table operation in flight.
        return Err(bad_state(mfn, "page lock or type transition left behind"));
    }
    if p.owner == OWNER_FREE || p.owner == OWNER_XEN {
        let idle = p.count == 0
            && p.type_count == 0
            && ty == PageType::None
            && p.flags & !F_STALE == 0
            && p.linear == 0
            && p.hv_writers == 0;
        return if idle {
            Ok(())
        } else {
            Err(bad_state(mfn, "free or hypervisor frame in use"))
        };
    }
    if !is_domain(p.owner) {
        return Err(bad_state(mfn, "reserved owner id"));
    }
    if !p.is_dying() && p.count == 0 {
        return Err(bad_state(
            mfn,
            "owned frame without its allocation reference",
        ));
    }
    if p.type_count > 0 && ty == PageType::None {
        return Err(bad_state(mfn, "type count on an untyped frame"));
    }
    if p.hv_writers > 0
        && (ty != PageType::Writable
            || p.type_count < u32::from(p.hv_writers)
            || p.count < u32::from(p.hv_writers))
    {
        return Err(err(
            mfn,
            AuditErrorKind::HypervisorWritten("not writable-typed"),
        ));
    }
    match ty {
        PageType::L1 | PageType::L2 | PageType::L3 | PageType::L4 => {
            let expect_valid = p.type_count > 0 && !p.is_dying();
            if p.is_validated() != expect_valid {
                return Err(bad_state(mfn, "validated flag disagrees with type count"));
            }
        }
        PageType::Segment => {
            if p.is_validated() != (p.type_count > 0) {
                return Err(bad_state(mfn, "validated flag disagrees with type count"));
            }
        }
        PageType::None | PageType::Writable => {
            if p.is_validated() {
                return Err(bad_state(mfn, "validated flag on a non-table"));
            }
        }
    }
    if ty.level().is_none() && p.linear != 0 {
        return Err(bad_state(mfn, "linear count on a non-table"));
    }
    if p.is_pinned() && (ty.level().is_none() || !p.is_validated() || p.is_dying()) {
        return Err(bad_state(mfn, "pinned frame is not a validated table"));
    }
    Ok(())
}
