use super::*;
use guest_abi::arch::pte::NX;
use proptest::prelude::*;
use std::collections::HashMap;

const ALL: u64 = P | RW | US;

/// Machine memory of sparse 8-byte entries (absent ones read as 0).
struct Mem {
    words: HashMap<u64, u64>,
    top: u64,
    next: u64,
}

impl Mem {
    fn new() -> Self {
        Mem {
            words: HashMap::new(),
            top: 0x100_0000,
            next: 0x1000,
        }
    }
    fn frame(&mut self) -> u64 {
        let f = self.next;
        self.next += PAGE_SIZE;
        f
    }
    fn set(&mut self, table: u64, idx: u64, e: u64) {
        self.words.insert(table + idx * 8, e);
    }
    fn get(&self, table: u64, idx: u64) -> u64 {
        self.entry(table + idx * 8)
    }
}

impl Tables for Mem {
    fn max_phys(&self) -> u64 {
        self.top
    }
    fn entry(&self, pa: u64) -> u64 {
        assert!(
            pa.is_multiple_of(8) && pa + 8 <= self.top,
            "read at {pa:#x}"
        );
        self.words.get(&pa).copied().unwrap_or(0)
    }
}

fn idx(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * level)) & 511
}

/// Maps `va` to a fresh frame through fresh tables, every entry with
/// `flags`; answers (L4, [the table of each level 3..0 and the leaf], leaf).
fn map(m: &mut Mem, va: u64, flags: u64) -> (u64, [u64; 4], u64) {
    let l4 = m.frame();
    let mut tables = [l4, 0, 0, 0];
    let mut t = l4;
    for (i, level) in (1..4).rev().enumerate() {
        let next = m.frame();
        m.set(t, idx(va, level), next | flags);
        tables[i + 1] = next;
        t = next;
    }
    let leaf = m.frame();
    m.set(t, idx(va, 0), leaf | flags);
    (l4, tables, leaf)
}

/// The walk as the hypervisor did it before it moved here, kept as the
/// reference the walk is compared against.
fn reference(m: &Mem, cr3: u64, va: u64, write: bool) -> Result<u64, Fault> {
    let hi = va >> 47;
    let ok =
        hi == 0 || hi == 0x1ffff && !(0xFFFF_8000_0000_0000..0xFFFF_8800_0000_0000).contains(&va);
    if !ok {
        return Err(Fault);
    }
    let mut table = cr3 & ADDR_MASK;
    for level in (0..4).rev() {
        let pa = table + ((va >> (12 + 9 * level)) & 511) * 8;
        if pa + 8 > m.top {
            return Err(Fault);
        }
        let e = m.entry(pa);
        if e & P == 0 || e & US == 0 || (write && e & RW == 0) {
            return Err(Fault);
        }
        if level > 0 && e & PS != 0 {
            return Err(Fault);
        }
        table = e & ADDR_MASK;
    }
    let pa = table | (va & 4095);
    if pa >= m.top { Err(Fault) } else { Ok(pa) }
}

#[test]
fn maps_a_page_for_reads_and_writes() {
    let mut m = Mem::new();
    let va = 0x0000_1234_5678_9abc;
    let (l4, _, leaf) = map(&mut m, va, ALL);
    assert_eq!(translate(&m, l4, va, false), Ok(leaf | 0xabc));
    assert_eq!(translate(&m, l4, va, true), Ok(leaf | 0xabc));
    // CR3's low bits (PCID, PWT/PCD) do not move the L4.
    assert_eq!(translate(&m, l4 | 0x18, va, false), Ok(leaf | 0xabc));
    // The next page is not mapped.
    assert_eq!(translate(&m, l4, va + 0x1000, false), Err(Fault));
}

#[test]
fn every_level_needs_present_and_user_and_rw_for_writes() {
    for level in 0..4usize {
        for (clear, read_ok) in [(P, false), (US, false), (RW, true)] {
            let mut m = Mem::new();
            let va = 0x7fff_ffff_f000 + 0x123;
            let (l4, tables, _) = map(&mut m, va, ALL);
            let table = tables[3 - level];
            let i = idx(va, level as u32);
            let e = m.get(table, i);
            m.set(table, i, e & !clear);
            assert_eq!(
                translate(&m, l4, va, false).is_ok(),
                read_ok,
                "level {level} without {clear:#x}"
            );
            assert_eq!(
                translate(&m, l4, va, true),
                Err(Fault),
                "level {level} without {clear:#x}"
            );
        }
    }
}

#[test]
fn no_execute_plays_no_part() {
    let mut m = Mem::new();
    let va = 0x40_0000;
    let (l4, _, leaf) = map(&mut m, va, ALL | NX);
    assert_eq!(translate(&m, l4, va, false), Ok(leaf));
    assert_eq!(translate(&m, l4, va, true), Ok(leaf));
}

#[test]
fn superpages_are_never_followed() {
    for level in 1..4usize {
        let mut m = Mem::new();
        let va = 0x20_0000 * 3 + 0x10;
        let (l4, tables, _) = map(&mut m, va, ALL);
        let table = tables[3 - level];
        let i = idx(va, level as u32);
        let e = m.get(table, i);
        m.set(table, i, e | PS);
        assert_eq!(
            translate(&m, l4, va, false),
            Err(Fault),
            "PS at level {level}"
        );
    }
    // In an L1 entry the same bit is PAT, and the page translates.
    let mut m = Mem::new();
    let va = 0x5000;
    let (l4, tables, leaf) = map(&mut m, va, ALL);
    let e = m.get(tables[3], idx(va, 0));
    m.set(tables[3], idx(va, 0), e | PS);
    assert_eq!(translate(&m, l4, va, false), Ok(leaf));
}

#[test]
fn non_canonical_and_hypervisor_addresses_never_translate() {
    // Tables that map the L4 slot of each address probed, so only the
    // address check can refuse.
    for (va, ok) in [
        (0x0000_7fff_ffff_f000u64, true),
        (0x0000_8000_0000_0000, false),
        (0x1234_0000_0000_0000, false),
        (0xFFFF_7FFF_FFFF_F000, false),
        (0xFFFF_8000_0000_0000, false),
        (0xFFFF_8300_0000_1000, false),
        (0xFFFF_87FF_FFFF_F000, false),
        (0xFFFF_8800_0000_0000, true),
        (0xFFFF_FFFF_FFFF_F000, true),
    ] {
        let mut m = Mem::new();
        let (l4, _, leaf) = map(&mut m, va, ALL);
        let want = if ok { Ok(leaf) } else { Err(Fault) };
        assert_eq!(translate(&m, l4, va, false), want, "{va:#x}");
        assert_eq!(guest_address(va), ok, "{va:#x}");
    }
}

#[test]
fn nothing_at_or_beyond_the_top_of_ram() {
    let mut m = Mem::new();
    let va = 0x1000;
    let (l4, tables, _) = map(&mut m, va, ALL);
    // A leaf frame at the top of RAM.
    m.set(tables[3], idx(va, 0), m.top | ALL);
    assert_eq!(translate(&m, l4, va, false), Err(Fault));
    // The last byte of RAM translates.
    m.set(tables[3], idx(va, 0), (m.top - PAGE_SIZE) | ALL);
    assert_eq!(translate(&m, l4, va + 0xfff, false), Ok(m.top - 1));
    // A table beyond RAM is never read (`Mem::entry` would panic).
    m.set(tables[2], idx(va, 1), (m.top + 0x10_0000) | ALL);
    assert_eq!(translate(&m, l4, va, false), Err(Fault));
    // An L4 beyond RAM.
    assert_eq!(translate(&m, m.top, va, false), Err(Fault));
}

#[test]
fn a_table_that_loops_ends_after_four_levels() {
    // An L4 whose entry 0 names the L4 itself: every level reads the same
    // table, and address 0 reaches the L4's own frame.
    let mut m = Mem::new();
    let l4 = m.frame();
    m.set(l4, 0, l4 | ALL);
    assert_eq!(translate(&m, l4, 0x10, false), Ok(l4 | 0x10));
    assert_eq!(translate(&m, l4, 0x1000, false), Err(Fault));
    // Two tables naming each other.
    let other = m.frame();
    m.set(l4, 1, other | ALL);
    m.set(other, 1, l4 | ALL);
    let va = (1 << 39) | (1 << 30) | (1 << 21) | (1 << 12) | 8;
    assert_eq!(translate(&m, l4, va, false), Ok(l4 | 8));
}

#[test]
fn ranges_stay_on_their_side_of_the_hole() {
    assert!(guest_range(0, 0));
    assert!(guest_range(0x7fff_ffff_fff8, 8));
    assert!(!guest_range(0x7fff_ffff_fff8, 9));
    assert!(!guest_range(0xFFFF_87FF_FFFF_FFF8, 8));
    assert!(guest_range(0xFFFF_8800_0000_0000, 4096));
    assert!(guest_range(0xFFFF_FFFF_FFFF_FFF0, 8));
    // The end must be an address: the last bytes of the address space are
    // out of reach.
    assert!(!guest_range(0xFFFF_FFFF_FFFF_FFF8, 8));
    assert!(!guest_range(0x1000, usize::MAX as u64));
}

/// Two pages at `va` and `va + 4096` on frames that are not adjacent.
fn two_pages(m: &mut Mem, va: u64) -> (u64, u64, u64, [u64; 4]) {
    let (l4, tables, a) = map(m, va, ALL);
    let _gap = m.frame();
    let b = m.frame();
    m.set(tables[3], idx(va + PAGE_SIZE, 0), b | ALL);
    (l4, a, b, tables)
}

#[test]
fn pieces_split_at_page_boundaries() {
    let mut m = Mem::new();
    let va = 0x60_0000;
    let (l4, a, b, _) = two_pages(&mut m, va);
    let mut got = vec![];
    for_each_piece(&m, l4, va + 0xff0, 0x20, false, |pa, off, n| {
        got.push((pa, off, n))
    })
    .unwrap();
    assert_eq!(got, [(a | 0xff0, 0, 0x10), (b, 0x10, 0x10)]);
    got.clear();
    for_each_piece(&m, l4, va, 0x2000, true, |pa, off, n| {
        got.push((pa, off, n))
    })
    .unwrap();
    assert_eq!(got, [(a, 0, 0x1000), (b, 0x1000, 0x1000)]);
    got.clear();
    for_each_piece(&m, l4, va + 5, 0, true, |pa, off, n| got.push((pa, off, n))).unwrap();
    assert!(got.is_empty());
    for_each_piece_all(&m, l4, va + 0xfff, 2, true, |pa, off, n| {
        got.push((pa, off, n))
    })
    .unwrap();
    assert_eq!(got, [(a | 0xfff, 0, 1), (b, 1, 1)]);
}

#[test]
fn a_failing_piece_stops_the_walk() {
    let mut m = Mem::new();
    let va = 0x60_0000;
    let (l4, a, b, tables) = two_pages(&mut m, va);
    // The second page read-only: a read covers both, a write neither.
    m.set(tables[3], idx(va + PAGE_SIZE, 0), b | P | US);
    let mut got = vec![];
    for_each_piece(&m, l4, va + 0xff8, 16, false, |pa, off, n| {
        got.push((pa, off, n))
    })
    .unwrap();
    assert_eq!(got, [(a | 0xff8, 0, 8), (b, 8, 8)]);
    got.clear();
    let r = for_each_piece(&m, l4, va + 0xff8, 16, true, |pa, off, n| {
        got.push((pa, off, n))
    });
    assert_eq!(r, Err(Fault));
    assert_eq!(got, [(a | 0xff8, 0, 8)]);
    got.clear();
    let r = for_each_piece_all(&m, l4, va + 0xff8, 16, true, |pa, off, n| {
        got.push((pa, off, n))
    });
    assert_eq!(r, Err(Fault));
    assert!(got.is_empty());
    // A range that wraps the address space fails without a panic.
    let r = for_each_piece(&m, l4, u64::MAX - 3, 8, false, |_, _, _| {});
    assert_eq!(r, Err(Fault));
}

/// An entry drawn from a few frames (tables, RAM, beyond RAM) and flag
/// combinations.
fn entry() -> impl Strategy<Value = u64> {
    (0u64..6, any::<u8>(), any::<bool>()).prop_map(|(f, bits, nx)| {
        let frame = match f {
            5 => 0x100_0000,
            n => 0x1000 * (n + 1),
        };
        let flags = u64::from(bits) & (P | RW | US | PS | 0x18 | 0x60);
        frame | flags | if nx { NX } else { 0 }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(512)))]
    /// Random tables over a few frames (loops included): the walk answers
    /// what the hypervisor's walk answered before it moved here.
    #[test]
    fn fuzz_walk_matches_the_reference(
        words in proptest::collection::vec((1u64..5, prop_oneof![Just(0u64), Just(1), Just(256), Just(300), Just(511)], entry()), 0..40),
        cr3 in 1u64..6,
        va_idx in proptest::collection::vec(prop_oneof![Just(0u64), Just(1), Just(256), Just(300), Just(511)], 4),
        low in 0u64..4096,
        high in any::<bool>(),
        write in any::<bool>(),
    ) {
        let mut m = Mem::new();
        for (f, i, e) in words {
            m.set(f * 0x1000, i, e);
        }
        let mut va = low;
        for (level, i) in va_idx.iter().enumerate() {
            va |= i << (12 + 9 * (3 - level));
        }
        if high && va >> 47 != 0 {
            va |= 0xFFFF_0000_0000_0000;
        }
        let cr3 = if cr3 == 5 { m.top } else { cr3 * 0x1000 };
        prop_assert_eq!(translate(&m, cr3, va, write), reference(&m, cr3, va, write));
    }
}
