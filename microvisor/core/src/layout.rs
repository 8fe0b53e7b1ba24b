//! The domain builder's virtual layout arithmetic for a new PV domain, in
//! Xen's order: from `virt_base`, each piece page aligned, the pages up to the
//! kernel, the kernel, an optional module, the p2m list, `start_info`, the
//! xenstore page, the console page, the bootstrap page tables (L4, L3s, L2s,
//! L1s), one stack page, then padding up to `v_end`, the first 4 MiB boundary
//! at least 512 KiB past the stack. Everything in `[virt_base, v_end)` is
//! mapped, page `pfn` at `virt_base + pfn * 4096`. This module owns those
//! numbers and the exact contents of each bootstrap table (as pfns and flags);
//! it never touches memory, never knows machine frame numbers (the caller
//! translates pfn to mfn through its p2m and installs the hypervisor's own L4
//! slots 256-271), and returns errors rather than overflowing.

use core::fmt;

use crate::{PAGE_SIZE, is_page_aligned, page_round_up};

/// Flags of L4, L3 and L2 entries: present, writable, accessed, dirty, user.
pub const TABLE_FLAGS: u64 = 0x67;
/// Flags of an L1 entry mapping an ordinary page: present, writable, accessed, user.
pub const PAGE_FLAGS: u64 = 0x27;
/// Flags of an L1 entry mapping a bootstrap page-table frame: read-only.
pub const PAGE_TABLE_FLAGS: u64 = 0x25;

/// Minimum padding mapped after the stack page.
pub const MIN_PADDING: u64 = 512 << 10;
/// `v_end` is a multiple of this.
pub const V_END_ALIGN: u64 = 4 << 20;
/// Entries per page table.
pub const ENTRIES: u64 = 512;

/// Lowest address of the hypervisor's reserved L4 slots (256-271).
const HYPERVISOR_START: u64 = 0xFFFF_8000_0000_0000;
/// End of the hypervisor's reserved L4 slots.
const HYPERVISOR_END: u64 = 0xFFFF_8800_0000_0000;
/// End of the lower canonical half.
const LOWER_HALF_END: u64 = 0x0000_8000_0000_0000;

/// Coverage shifts: what one L4, L3, L2 or L1 *entry* maps.
const L4_SHIFT: u32 = 39;
const L3_SHIFT: u32 = 30;
const L2_SHIFT: u32 = 21;
const L1_SHIFT: u32 = 12;

/// Why a layout could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// `virt_base` or `virt_kstart` is not page aligned.
    Misaligned,
    /// The kernel range is not `virt_base <= kstart <= kend`.
    BadKernelRange,
    /// An address or size computation overflowed.
    Overflow,
    /// The mapped region leaves the canonical address space.
    NonCanonical,
    /// The mapped region overlaps the hypervisor's reserved range.
    OverlapsHypervisor,
    /// A module of no bytes, or a placement the layout was not computed
    /// for (a mapped module needs `module_len`, an unmapped one none).
    BadModule,
    /// The mapped region needs more pages than the domain has.
    DomainTooSmall {
        /// Pages the mapped region needs.
        needed: u64,
        /// Pages the domain has.
        available: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned => f.write_str("virt_base or kernel start not page aligned"),
            Self::BadKernelRange => f.write_str("kernel range not inside the mapped region"),
            Self::Overflow => f.write_str("layout addresses overflow"),
            Self::NonCanonical => f.write_str("layout leaves the canonical address space"),
            Self::BadModule => f.write_str("ramdisk is empty"),
            Self::OverlapsHypervisor => {
                f.write_str("layout overlaps the hypervisor's address range")
            }
            Self::DomainTooSmall { needed, available } => write!(
                f,
                "domain too small: the initial mapping needs {needed} pages, the domain has {available}"
            ),
        }
    }
}

/// What the builder knows before laying out a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutInput {
    /// Virtual address of pfn 0 (page aligned).
    pub virt_base: u64,
    /// First virtual address of the kernel image (page aligned).
    pub virt_kstart: u64,
    /// End (exclusive) of the kernel image.
    pub virt_kend: u64,
    /// Exact length of the boot module, if there is one.
    pub module_len: Option<u64>,
    /// Domain memory in 4 KiB pages.
    pub nr_pages: u64,
}

/// A page-aligned virtual range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    /// First address.
    pub start: u64,
    /// End address (exclusive, page aligned).
    pub end: u64,
}

/// Where a boot module lies and how `start_info` describes it
/// ([`Layout::place_module`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModulePlacement {
    /// First pfn of the module's pages (contiguous pfns).
    pub first_pfn: u64,
    /// Number of pages.
    pub pages: u64,
    /// `start_info.mod_start`: a virtual address, or with `start_pfn` a pfn.
    pub mod_start: u64,
    /// `start_info.mod_len`: the module's whole pages, in bytes.
    pub mod_len: u64,
    /// `SIF_MOD_START_PFN` goes into `start_info.flags`.
    pub start_pfn: bool,
}

/// Level of a bootstrap page table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableLevel {
    /// The root (one per domain).
    L4,
    /// Maps 512 GiB.
    L3,
    /// Maps 1 GiB.
    L2,
    /// Maps 2 MiB in 4 KiB pages.
    L1,
}

/// The virtual layout of a new domain. All addresses are virtual and page
/// aligned; ranges are `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Virtual address of pfn 0.
    pub virt_base: u64,
    /// Start of the kernel image.
    pub kstart: u64,
    /// End of the kernel image, rounded up to a page.
    pub kend: u64,
    /// The module's pages (the exact length is the caller's); `None` if no module.
    pub module: Option<PageRange>,
    /// The p2m list (`nr_pages` u64 entries), page rounded; `start_info.mfn_list`.
    pub p2m: PageRange,
    /// The `start_info` page (passed in `rsi`).
    pub start_info: u64,
    /// The xenstore ring page.
    pub xenstore: u64,
    /// The console ring page.
    pub console: u64,
    /// First bootstrap page-table frame (the L4; `start_info.pt_base`).
    pub pt_start: u64,
    /// Number of bootstrap page-table frames (`start_info.nr_pt_frames`).
    pub nr_pt_frames: u64,
    /// Number of L4 tables (always 1).
    pub nr_l4: u64,
    /// Number of L3 tables.
    pub nr_l3: u64,
    /// Number of L2 tables.
    pub nr_l2: u64,
    /// Number of L1 tables.
    pub nr_l1: u64,
    /// The stack page.
    pub stack: u64,
    /// Initial `rsp`: the top of the stack page.
    pub stack_top: u64,
    /// End of the mapped region (4 MiB aligned).
    pub v_end: u64,
    /// Pages mapped: `(v_end - virt_base) / 4096`.
    pub nr_mapped_pages: u64,
    /// Domain memory in pages.
    pub nr_pages: u64,
}

/// Number of `1 << shift` blocks touched by `[low, high)` (`high > low`).
fn blocks(low: u64, high: u64, shift: u32) -> Option<u64> {
    let last = high.checked_sub(1)? >> shift;
    let first = low >> shift;
    last.checked_sub(first)?.checked_add(1)
}

/// Rounds `value` up to a multiple of `align` (a power of two).
fn round_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// `a + n * PAGE_SIZE`.
fn pages_after(a: u64, n: u64) -> Option<u64> {
    a.checked_add(n.checked_mul(PAGE_SIZE)?)
}

impl Layout {
    /// Lays out a domain. Errors if an input is misaligned, an address
    /// overflows or leaves the guest's part of the address space, or the
    /// mapped region needs more than `nr_pages` pages.
    pub fn compute(input: &LayoutInput) -> Result<Self, LayoutError> {
        let ovf = LayoutError::Overflow;
        let LayoutInput {
            virt_base,
            virt_kstart,
            virt_kend,
            module_len,
            nr_pages,
        } = *input;
        if !is_page_aligned(virt_base) || !is_page_aligned(virt_kstart) {
            return Err(LayoutError::Misaligned);
        }
        if virt_base > virt_kstart || virt_kstart > virt_kend {
            return Err(LayoutError::BadKernelRange);
        }

        let kend = page_round_up(virt_kend).ok_or(ovf)?;
        let mut cursor = kend;
        let module = match module_len {
            Some(len) => {
                let start = cursor;
                let end = page_round_up(start.checked_add(len).ok_or(ovf)?).ok_or(ovf)?;
                cursor = end;
                Some(PageRange { start, end })
            }
            None => None,
        };
        let p2m_bytes = nr_pages.checked_mul(8).ok_or(ovf)?;
        let p2m = PageRange {
            start: cursor,
            end: page_round_up(cursor.checked_add(p2m_bytes).ok_or(ovf)?).ok_or(ovf)?,
        };
        let start_info = p2m.end;
        let xenstore = pages_after(start_info, 1).ok_or(ovf)?;
        let console = pages_after(start_info, 2).ok_or(ovf)?;
        let pt_start = pages_after(start_info, 3).ok_or(ovf)?;

        // The table count decides where the stack and v_end go, and v_end
        // decides the table count: start low and recount until it settles. The
        // count only grows, so this finds the smallest consistent one.
        let mut nr_pt_frames = 2u64;
        let mut rounds = 0u32;
        let (stack, v_end, nr_l3, nr_l2, nr_l1) = loop {
            let stack = pages_after(pt_start, nr_pt_frames).ok_or(ovf)?;
            let stack_end = pages_after(stack, 1).ok_or(ovf)?;
            let v_end =
                round_up(stack_end.checked_add(MIN_PADDING).ok_or(ovf)?, V_END_ALIGN).ok_or(ovf)?;
            let nr_l3 = blocks(virt_base, v_end, L4_SHIFT).ok_or(ovf)?;
            let nr_l2 = blocks(virt_base, v_end, L3_SHIFT).ok_or(ovf)?;
            let nr_l1 = blocks(virt_base, v_end, L2_SHIFT).ok_or(ovf)?;
            let needed = nr_l3
                .checked_add(nr_l2)
                .and_then(|n| n.checked_add(nr_l1))
                .and_then(|n| n.checked_add(1))
                .ok_or(ovf)?;
            if needed <= nr_pt_frames {
                break (stack, v_end, nr_l3, nr_l2, nr_l1);
            }
            nr_pt_frames = needed;
            rounds = rounds.saturating_add(1);
            if rounds > 64 {
                return Err(ovf);
            }
        };

        let in_lower = v_end <= LOWER_HALF_END;
        let in_upper = virt_base >= HYPERVISOR_START;
        if !in_lower && !in_upper {
            return Err(LayoutError::NonCanonical);
        }
        if virt_base < HYPERVISOR_END && v_end > HYPERVISOR_START {
            return Err(LayoutError::OverlapsHypervisor);
        }

        let nr_mapped_pages = (v_end - virt_base) / PAGE_SIZE;
        if nr_mapped_pages > nr_pages {
            return Err(LayoutError::DomainTooSmall {
                needed: nr_mapped_pages,
                available: nr_pages,
            });
        }

        Ok(Self {
            virt_base,
            kstart: virt_kstart,
            kend,
            module,
            p2m,
            start_info,
            xenstore,
            console,
            pt_start,
            nr_pt_frames,
            nr_l4: 1,
            nr_l3,
            nr_l2,
            nr_l1,
            stack,
            stack_top: stack.checked_add(PAGE_SIZE).ok_or(ovf)?,
            v_end,
            nr_mapped_pages,
            nr_pages,
        })
    }

    /// The pfn mapped at `va`, if `va` lies in `[virt_base, v_end)`.
    pub fn pfn_of(&self, va: u64) -> Option<u64> {
        if va < self.virt_base || va >= self.v_end {
            return None;
        }
        Some((va - self.virt_base) / PAGE_SIZE)
    }

    /// The virtual address of mapped page `pfn`, if it is mapped.
    pub fn va_of(&self, pfn: u64) -> Option<u64> {
        if pfn >= self.nr_mapped_pages {
            return None;
        }
        pages_after(self.virt_base, pfn)
    }

    /// Pfn of the L4 (the first table frame).
    pub fn pt_pfn(&self) -> u64 {
        (self.pt_start - self.virt_base) / PAGE_SIZE
    }

    /// True when `pfn` is one of the bootstrap page-table frames.
    pub fn is_page_table_pfn(&self, pfn: u64) -> bool {
        let first = self.pt_pfn();
        pfn >= first && pfn - first < self.nr_pt_frames
    }

    /// Level of table `index` (0 = the L4, then the L3s, L2s and L1s in
    /// address order; table `index` lives at pfn `pt_pfn() + index`).
    pub fn table_level(&self, index: u64) -> Option<TableLevel> {
        let mut rest = index;
        for (level, count) in [
            (TableLevel::L4, 1),
            (TableLevel::L3, self.nr_l3),
            (TableLevel::L2, self.nr_l2),
            (TableLevel::L1, self.nr_l1),
        ] {
            if rest < count {
                return Some(level);
            }
            rest -= count;
        }
        None
    }

    /// Calls `f(entry_index, target_pfn, flags)` for every non-empty entry of
    /// bootstrap table `index` (see [`Layout::table_level`]), in entry order,
    /// and returns the table's level (`None`, with no calls, for an index past
    /// the last table).
    ///
    /// L4, L3 and L2 entries point at the next-level table's pfn with
    /// [`TABLE_FLAGS`]; L1 entries map pfns `0..nr_mapped_pages` with
    /// [`PAGE_FLAGS`], except the table frames themselves, mapped with
    /// [`PAGE_TABLE_FLAGS`] (read-only). The caller converts pfns to mfns and
    /// adds the hypervisor's L4 slots 256-271.
    pub fn table_entries(
        &self,
        index: u64,
        mut f: impl FnMut(usize, u64, u64),
    ) -> Option<TableLevel> {
        let level = self.table_level(index)?;
        let pt_pfn = self.pt_pfn();
        // (first table index of this level, number of tables at this level,
        //  what one table covers, first table index of the child level,
        //  number of child tables, what one child table covers)
        let first_l3 = 1;
        let first_l2 = first_l3 + self.nr_l3;
        let first_l1 = first_l2 + self.nr_l2;
        let (parent_first, parent_count, parent_shift, child_first, child_count, child_shift) =
            match level {
                TableLevel::L4 => (0, 1, 48, first_l3, self.nr_l3, L4_SHIFT),
                TableLevel::L3 => (
                    first_l3, self.nr_l3, L4_SHIFT, first_l2, self.nr_l2, L3_SHIFT,
                ),
                TableLevel::L2 => (
                    first_l2, self.nr_l2, L3_SHIFT, first_l1, self.nr_l1, L2_SHIFT,
                ),
                TableLevel::L1 => {
                    self.l1_entries(index - first_l1, &mut f);
                    return Some(level);
                }
            };
        let p = index - parent_first;
        let child_base = self.virt_base >> child_shift;
        // Children of parent `p` are the child tables whose blocks fall in its
        // block. For p > 0 the parent's block starts above virt_base, so the
        // first child is counted from the aligned-down base.
        let first_child = |p: u64| -> Option<u64> {
            if p == 0 {
                return Some(0);
            }
            let parent_block = (self.virt_base >> parent_shift).checked_add(p)?;
            let start_block = parent_block.checked_mul(1u64 << (parent_shift - child_shift))?;
            start_block.checked_sub(child_base)
        };
        let Some(lo) = first_child(p) else {
            return Some(level);
        };
        let hi = if p.checked_add(1).is_some_and(|next| next < parent_count) {
            match first_child(p + 1) {
                Some(hi) => hi.min(child_count),
                None => return Some(level),
            }
        } else {
            child_count
        };
        for m in lo..hi {
            let Some(block) = child_base.checked_add(m) else {
                break;
            };
            let slot = usize::try_from(block % ENTRIES).unwrap_or(0);
            f(slot, pt_pfn + child_first + m, TABLE_FLAGS);
        }
        Some(level)
    }

    /// Where the boot module (a ramdisk of `len` bytes) goes and what
    /// `start_info` says of it, as Xen's toolstack builder places it. A
    /// kernel without the `MOD_START_PFN` note (`pfn_ok` false) gets it in
    /// the initial mapping right after the kernel (this layout must have
    /// been computed with `module_len = Some(len)`), `mod_start` its virtual
    /// address. A kernel with the note (Linux) gets it outside the initial
    /// mapping, in the pfns right after `v_end` (computed with no
    /// `module_len`), `mod_start` its first pfn and `SIF_MOD_START_PFN` set.
    /// Either way `mod_len` is the module's whole pages (the toolstack's
    /// segment length), the bytes past `len` zero.
    pub fn place_module(&self, len: u64, pfn_ok: bool) -> Result<ModulePlacement, LayoutError> {
        let ovf = LayoutError::Overflow;
        if len == 0 {
            return Err(LayoutError::BadModule);
        }
        let pages = page_round_up(len).ok_or(ovf)? / PAGE_SIZE;
        if !pfn_ok {
            let range = self.module.ok_or(LayoutError::BadModule)?;
            if range.end - range.start != pages * PAGE_SIZE {
                return Err(LayoutError::BadModule);
            }
            return Ok(ModulePlacement {
                first_pfn: (range.start - self.virt_base) / PAGE_SIZE,
                pages,
                mod_start: range.start,
                mod_len: pages * PAGE_SIZE,
                start_pfn: false,
            });
        }
        if self.module.is_some() {
            return Err(LayoutError::BadModule);
        }
        let first_pfn = self.nr_mapped_pages;
        let needed = first_pfn.checked_add(pages).ok_or(ovf)?;
        if needed > self.nr_pages {
            return Err(LayoutError::DomainTooSmall {
                needed,
                available: self.nr_pages,
            });
        }
        Ok(ModulePlacement {
            first_pfn,
            pages,
            mod_start: first_pfn,
            mod_len: pages * PAGE_SIZE,
            start_pfn: true,
        })
    }

    /// Entries of L1 table number `n` (0 = lowest).
    fn l1_entries(&self, n: u64, f: &mut impl FnMut(usize, u64, u64)) {
        let Some(block) = (self.virt_base >> L2_SHIFT).checked_add(n) else {
            return;
        };
        let Some(block_start) = block.checked_mul(1 << L2_SHIFT) else {
            return;
        };
        let start = block_start.max(self.virt_base);
        let end = match block_start.checked_add(1 << L2_SHIFT) {
            Some(e) => e.min(self.v_end),
            None => self.v_end,
        };
        let mut va = start;
        while va < end {
            let pfn = (va - self.virt_base) / PAGE_SIZE;
            let flags = if self.is_page_table_pfn(pfn) {
                PAGE_TABLE_FLAGS
            } else {
                PAGE_FLAGS
            };
            let slot = usize::try_from((va >> L1_SHIFT) % ENTRIES).unwrap_or(0);
            f(slot, pfn, flags);
            match va.checked_add(PAGE_SIZE) {
                Some(next) => va = next,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn input(virt_base: u64, kstart: u64, kend: u64, nr_pages: u64) -> LayoutInput {
        LayoutInput {
            virt_base,
            virt_kstart: kstart,
            virt_kend: kend,
            module_len: None,
            nr_pages,
        }
    }

    /// Every table's entries, keyed by table index.
    fn all_tables(l: &Layout) -> HashMap<u64, Vec<(usize, u64, u64)>> {
        let mut tables = HashMap::new();
        for t in 0..l.nr_pt_frames {
            let mut entries = Vec::new();
            assert!(
                l.table_entries(t, |i, pfn, flags| entries.push((i, pfn, flags)))
                    .is_some()
            );
            tables.insert(t, entries);
        }
        let mut none = 0;
        assert!(
            l.table_entries(l.nr_pt_frames, |_, _, _| none += 1)
                .is_none()
        );
        assert_eq!(none, 0);
        tables
    }

    /// Walks the tables for `va`: (pfn, flags) of the final L1 entry.
    fn translate(
        l: &Layout,
        tables: &HashMap<u64, Vec<(usize, u64, u64)>>,
        va: u64,
    ) -> Option<(u64, u64)> {
        let mut table = 0u64;
        for shift in [39u32, 30, 21, 12] {
            let slot = ((va >> shift) & 511) as usize;
            let entries = &tables[&table];
            let hits: Vec<_> = entries.iter().filter(|e| e.0 == slot).collect();
            assert!(hits.len() <= 1, "duplicate slot {slot} in table {table}");
            let &(_, target, flags) = *hits.first()?;
            if shift == 12 {
                return Some((target, flags));
            }
            assert_eq!(flags, TABLE_FLAGS);
            table = target - l.pt_pfn();
        }
        None
    }

    /// Checks every invariant of a layout, including the full page walk.
    fn check(l: &Layout, module_len: Option<u64>) {
        let aligned = |v: u64| v.is_multiple_of(4096);
        for v in [
            l.kstart,
            l.kend,
            l.p2m.start,
            l.p2m.end,
            l.start_info,
            l.xenstore,
            l.console,
            l.pt_start,
            l.stack,
        ] {
            assert!(aligned(v), "{v:#x}");
        }
        assert!(l.virt_base <= l.kstart && l.kstart <= l.kend);
        let after_kernel = match (l.module, module_len) {
            (Some(m), Some(len)) => {
                assert_eq!(m.start, l.kend);
                assert_eq!(m.end, (m.start + len).div_ceil(4096) * 4096);
                m.end
            }
            (None, None) => l.kend,
            _ => panic!("module mismatch"),
        };
        assert_eq!(l.p2m.start, after_kernel);
        assert_eq!(
            l.p2m.end,
            l.p2m.start + (l.nr_pages * 8).div_ceil(4096) * 4096
        );
        assert_eq!(l.start_info, l.p2m.end);
        assert_eq!(l.xenstore, l.start_info + 4096);
        assert_eq!(l.console, l.xenstore + 4096);
        assert_eq!(l.pt_start, l.console + 4096);
        assert_eq!(l.nr_pt_frames, l.nr_l4 + l.nr_l3 + l.nr_l2 + l.nr_l1);
        assert_eq!(l.stack, l.pt_start + l.nr_pt_frames * 4096);
        assert_eq!(l.stack_top, l.stack + 4096);
        assert_eq!(l.v_end % (4 << 20), 0);
        assert!(l.v_end - l.stack_top >= 512 << 10);
        assert!(l.v_end - l.stack_top < (512 << 10) + (4 << 20));
        assert_eq!(l.nr_mapped_pages, (l.v_end - l.virt_base) / 4096);
        assert!(l.nr_mapped_pages <= l.nr_pages);

        let tables = all_tables(l);
        // Every table but the L4 is referenced exactly once.
        let mut referenced = HashMap::new();
        for t in 0..l.nr_pt_frames {
            if l.table_level(t) != Some(TableLevel::L1) {
                for &(_, target, _) in &tables[&t] {
                    *referenced.entry(target).or_insert(0) += 1;
                }
            }
        }
        for t in 1..l.nr_pt_frames {
            assert_eq!(referenced.get(&(l.pt_pfn() + t)), Some(&1), "table {t}");
        }
        // L1 entries: exactly one per mapped page.
        let l1_total: usize = (0..l.nr_pt_frames)
            .filter(|&t| l.table_level(t) == Some(TableLevel::L1))
            .map(|t| tables[&t].len())
            .sum();
        assert_eq!(l1_total as u64, l.nr_mapped_pages);
        for pfn in 0..l.nr_mapped_pages {
            let va = l.va_of(pfn).unwrap();
            assert_eq!(l.pfn_of(va), Some(pfn));
            let (got, flags) = translate(l, &tables, va).expect("mapped va not covered");
            assert_eq!(got, pfn);
            let want = if l.is_page_table_pfn(pfn) {
                PAGE_TABLE_FLAGS
            } else {
                PAGE_FLAGS
            };
            assert_eq!(flags, want);
        }
        assert_eq!(l.pfn_of(l.v_end), None);
        if l.virt_base > 0 {
            assert_eq!(l.pfn_of(l.virt_base - 1), None);
        }
        assert_eq!(l.va_of(l.nr_mapped_pages), None);
    }

    #[test]
    fn worked_example() {
        let l = Layout::compute(&input(0, 0x100000, 0x111000, 32768)).unwrap();
        assert_eq!(l.kstart, 0x100000);
        assert_eq!(l.kend, 0x111000);
        assert_eq!(
            l.p2m,
            PageRange {
                start: 0x111000,
                end: 0x151000
            }
        );
        assert_eq!(l.start_info, 0x151000);
        assert_eq!(l.xenstore, 0x152000);
        assert_eq!(l.console, 0x153000);
        assert_eq!(l.pt_start, 0x154000);
        assert_eq!(l.nr_pt_frames, 5);
        assert_eq!((l.nr_l4, l.nr_l3, l.nr_l2, l.nr_l1), (1, 1, 1, 2));
        assert_eq!(l.stack, 0x159000);
        assert_eq!(l.stack_top, 0x15A000);
        assert_eq!(l.v_end, 0x400000);
        assert_eq!(l.nr_mapped_pages, 1024);
        assert_eq!(l.pt_pfn(), 0x154);
        assert_eq!(l.pfn_of(0x151000), Some(0x151));
        check(&l, None);

        let mut l4 = Vec::new();
        assert_eq!(
            l.table_entries(0, |i, p, f| l4.push((i, p, f))),
            Some(TableLevel::L4)
        );
        assert_eq!(l4, vec![(0, 0x155, 0x67)]);
        let mut l2 = Vec::new();
        assert_eq!(
            l.table_entries(2, |i, p, f| l2.push((i, p, f))),
            Some(TableLevel::L2)
        );
        assert_eq!(l2, vec![(0, 0x157, 0x67), (1, 0x158, 0x67)]);
        let mut l1 = Vec::new();
        assert_eq!(
            l.table_entries(3, |i, p, f| l1.push((i, p, f))),
            Some(TableLevel::L1)
        );
        assert_eq!(l1.len(), 512);
        assert_eq!(l1[0], (0, 0, 0x27));
        assert_eq!(l1[0x154], (0x154, 0x154, 0x25));
        assert_eq!(l1[0x158], (0x158, 0x158, 0x25));
        assert_eq!(l1[0x159], (0x159, 0x159, 0x27));
    }

    #[test]
    fn module_goes_after_the_kernel() {
        let mut inp = input(0, 0x100000, 0x110800, 32768);
        inp.module_len = Some(0x1801);
        let l = Layout::compute(&inp).unwrap();
        assert_eq!(
            l.module,
            Some(PageRange {
                start: 0x111000,
                end: 0x113000
            })
        );
        assert_eq!(l.p2m.start, 0x113000);
        check(&l, Some(0x1801));
    }

    #[test]
    fn a_mapped_module_is_described_by_its_virtual_address_and_whole_pages() {
        let mut inp = input(0x40_0000, 0x40_0000, 0x41_0800, 32768);
        inp.module_len = Some(0x1801);
        let l = Layout::compute(&inp).unwrap();
        let m = l.place_module(0x1801, false).unwrap();
        assert_eq!(
            m,
            ModulePlacement {
                first_pfn: 0x11,
                pages: 2,
                mod_start: 0x41_1000,
                mod_len: 0x2000,
                start_pfn: false,
            }
        );
        assert_eq!(l.va_of(m.first_pfn), Some(m.mod_start));
        // Asked for the other placement, or another length: refused.
        assert_eq!(l.place_module(0x1801, true), Err(LayoutError::BadModule));
        assert_eq!(l.place_module(0x3001, false), Err(LayoutError::BadModule));
        assert_eq!(l.place_module(0, false), Err(LayoutError::BadModule));
    }

    #[test]
    fn an_unmapped_module_follows_the_initial_mapping_by_pfn() {
        let l = Layout::compute(&input(0, 0x100000, 0x110800, 32768)).unwrap();
        let m = l.place_module(0x2000, true).unwrap();
        assert_eq!(m.first_pfn, l.nr_mapped_pages);
        assert_eq!((m.mod_start, m.mod_len, m.pages), (m.first_pfn, 0x2000, 2));
        assert!(m.start_pfn);
        assert_eq!(l.va_of(m.first_pfn), None, "not in the initial mapping");
        // It must fit the domain.
        let room = (l.nr_pages - l.nr_mapped_pages) * PAGE_SIZE;
        assert!(l.place_module(room, true).is_ok());
        assert_eq!(
            l.place_module(room + 1, true),
            Err(LayoutError::DomainTooSmall {
                needed: l.nr_pages + 1,
                available: l.nr_pages
            })
        );
        assert_eq!(l.place_module(u64::MAX, true), Err(LayoutError::Overflow));
        assert_eq!(l.place_module(0, true), Err(LayoutError::BadModule));
        // A layout with a mapped module has no unmapped one.
        let mut inp = input(0, 0x100000, 0x110800, 32768);
        inp.module_len = Some(1);
        let l = Layout::compute(&inp).unwrap();
        assert_eq!(l.place_module(1, true), Err(LayoutError::BadModule));
    }

    #[test]
    fn crossing_one_gib() {
        // Kernel just below 1 GiB: the mapping spills into a second L2.
        let vb = (1 << 30) - (2 << 20);
        let l = Layout::compute(&input(vb, vb, vb + 0x10000, 262144)).unwrap();
        assert_eq!((l.nr_l3, l.nr_l2, l.nr_l1), (1, 2, 3));
        assert_eq!(l.nr_pt_frames, 7);
        assert_eq!(l.v_end, (1 << 30) + (4 << 20));
        check(&l, None);
        // A huge domain whose p2m alone (1 GiB) pushes v_end past 1 GiB.
        let l = Layout::compute(&input(0, 0x100000, 0x111000, 1 << 27)).unwrap();
        assert!(l.v_end > 1 << 30);
        assert_eq!(l.nr_l2, 2);
        assert_eq!(l.nr_l1, l.v_end >> 21);
        assert_eq!(l.nr_pt_frames, 1 + 1 + 2 + l.nr_l1);
        assert_eq!(l.stack, l.pt_start + l.nr_pt_frames * 4096);
    }

    #[test]
    fn crossing_512_gib() {
        let vb = (512u64 << 30) - (2 << 20);
        let l = Layout::compute(&input(vb, vb, vb + 0x10000, 262144)).unwrap();
        assert_eq!((l.nr_l3, l.nr_l2, l.nr_l1), (2, 2, 3));
        let mut l4 = Vec::new();
        l.table_entries(0, |i, p, _| l4.push((i, p)));
        assert_eq!(l4, vec![(0, l.pt_pfn() + 1), (1, l.pt_pfn() + 2)]);
        let mut l3a = Vec::new();
        l.table_entries(1, |i, p, _| l3a.push((i, p)));
        assert_eq!(l3a, vec![(511, l.pt_pfn() + 3)]);
        let mut l3b = Vec::new();
        l.table_entries(2, |i, p, _| l3b.push((i, p)));
        assert_eq!(l3b, vec![(0, l.pt_pfn() + 4)]);
        check(&l, None);
        // p2m of 2^36 entries is 512 GiB by itself.
        let l = Layout::compute(&input(0, 0x100000, 0x111000, 1 << 36)).unwrap();
        assert_eq!(l.nr_l3, 2);
        assert!(l.v_end > 512 << 30);
    }

    #[test]
    fn high_linked_guest() {
        let vb = 0xffff_ffff_8000_0000;
        let l = Layout::compute(&input(vb, vb, vb + 0x20000, 4096)).unwrap();
        assert_eq!((l.nr_l3, l.nr_l2, l.nr_l1), (1, 1, 2));
        assert_eq!(l.v_end, vb + (4 << 20));
        let mut l4 = Vec::new();
        l.table_entries(0, |i, p, _| l4.push((i, p)));
        assert_eq!(l4, vec![(511, l.pt_pfn() + 1)]);
        let mut l3 = Vec::new();
        l.table_entries(1, |i, p, _| l3.push((i, p)));
        assert_eq!(l3, vec![(510, l.pt_pfn() + 2)]);
        check(&l, None);

        // Kernel above virt_base, virt_base not 2 MiB aligned.
        let vb = 0xffff_ffff_8010_0000;
        let l = Layout::compute(&input(vb, vb + 0x1000000, vb + 0x1234567, 65536)).unwrap();
        check(&l, None);
    }

    #[test]
    fn errors() {
        assert_eq!(
            Layout::compute(&input(0, 0x100000, 0x111000, 256)),
            Err(LayoutError::DomainTooSmall {
                needed: 1024,
                available: 256
            })
        );
        assert!(Layout::compute(&input(0, 0x100000, 0x111000, 1024)).is_ok());
        assert_eq!(
            Layout::compute(&input(0x800, 0x1000, 0x2000, 4096)),
            Err(LayoutError::Misaligned)
        );
        assert_eq!(
            Layout::compute(&input(0, 0x1800, 0x2000, 4096)),
            Err(LayoutError::Misaligned)
        );
        assert_eq!(
            Layout::compute(&input(0x2000, 0x1000, 0x3000, 4096)),
            Err(LayoutError::BadKernelRange)
        );
        assert_eq!(
            Layout::compute(&input(0, 0x3000, 0x2000, 4096)),
            Err(LayoutError::BadKernelRange)
        );
        assert_eq!(
            Layout::compute(&input(
                0x7FFF_FFFC_0000,
                0x7FFF_FFFC_0000,
                0x7FFF_FFFD_0000,
                4096
            )),
            Err(LayoutError::NonCanonical)
        );
        assert_eq!(
            Layout::compute(&input(1 << 60, 1 << 60, (1 << 60) + 0x1000, 4096)),
            Err(LayoutError::NonCanonical)
        );
        assert_eq!(
            Layout::compute(&input(
                HYPERVISOR_START,
                HYPERVISOR_START,
                HYPERVISOR_START + 0x1000,
                4096
            )),
            Err(LayoutError::OverlapsHypervisor)
        );
        let top = 0xFFFF_FFFF_FFF0_0000;
        assert_eq!(
            Layout::compute(&input(top, top, top + 0x1000, 4096)),
            Err(LayoutError::Overflow)
        );
        assert_eq!(
            Layout::compute(&input(0, 0, 0x1000, u64::MAX)),
            Err(LayoutError::Overflow)
        );
        let mut inp = input(0, 0, 0x1000, 4096);
        inp.module_len = Some(u64::MAX);
        assert_eq!(Layout::compute(&inp), Err(LayoutError::Overflow));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn invariants_hold(
            base_choice in 0usize..6,
            base_pages in 0u64..2048,
            gap_pages in 0u64..600,
            kernel_len in 0u64..0x300000,
            module_len in proptest::option::of(0u64..0x200000),
            nr_pages in 1u64..(1 << 21),
        ) {
            let bases = [
                0u64,
                (1 << 30) - (8 << 20),
                (512u64 << 30) - (4 << 20),
                0xffff_ffff_8000_0000,
                0xffff_8800_0000_0000,
                0x7FFF_0000_0000,
            ];
            let vb = bases[base_choice] + base_pages * 4096;
            let kstart = vb + gap_pages * 4096;
            let inp = LayoutInput {
                virt_base: vb,
                virt_kstart: kstart,
                virt_kend: kstart + kernel_len,
                module_len,
                nr_pages,
            };
            match Layout::compute(&inp) {
                Ok(l) => check(&l, module_len),
                Err(LayoutError::DomainTooSmall { needed, available }) => {
                    prop_assert!(needed > available);
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }

        #[test]
        fn arbitrary_input_never_panics(
            vb in any::<u64>(), ks in any::<u64>(), ke in any::<u64>(),
            ml in proptest::option::of(any::<u64>()), np in any::<u64>(),
            t in 0u64..10,
        ) {
            let inp = LayoutInput { virt_base: vb & !0xFFF, virt_kstart: ks & !0xFFF, virt_kend: ke, module_len: ml, nr_pages: np };
            if let Ok(l) = Layout::compute(&inp) {
                let mut n = 0u64;
                l.table_entries(t.min(l.nr_pt_frames), |_, _, _| n += 1);
                prop_assert!(n <= 512);
            }
        }
    }
}
