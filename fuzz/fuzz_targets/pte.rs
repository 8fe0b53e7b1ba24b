//! Page-table entries through the frame table: the input is a sequence of
//! guest and toolstack operations (pin, unpin, `mmu_update` of any entry
//! with any value, writes through writable mappings, base-pointer switches,
//! `update_va_mapping`, releases, domain teardown) on a small machine of 64
//! frames and two domains, frames 64..70 outside the table. Never a panic,
//! only the error codes the policy documents, a clean audit after every
//! step, and every frame free after both domains are torn down (the
//! properties of `frametable::proptests`).
#![no_main]

use guest_abi::errno::Errno;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use microvisor_core::frametable::{
    DOMID_SELF, ENTRIES, ExternalRef, FrameTable, HV_L4_SLOTS, PageInfo, PageType, TableMemory,
};

const N: usize = 64;
const D1: u16 = 1;
const D2: u16 = 2;
const P: u64 = 1;
const W: u64 = 1 << 1;
const U: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PSE: u64 = 1 << 7;
const G: u64 = 1 << 8;
const BIT62: u64 = 1 << 62;
const NX: u64 = 1 << 63;

/// The hypervisor's L4 slots: present, writable, accessed, dirty.
const HV: [u64; HV_L4_SLOTS] = {
    let mut a = [0u64; HV_L4_SLOTS];
    let mut i = 0;
    while i < HV_L4_SLOTS {
        a[i] = ((0x1000 + i as u64) << 12) | 0x63;
        i += 1;
    }
    a
};

/// Errors the policy documents for these operations.
const EXPECTED: [Errno; 3] = [Errno::EINVAL, Errno::EBUSY, Errno::EPERM];

/// Plain memory for the table frames; the policy must never touch a frame
/// outside the machine.
struct Mem(Vec<[u64; ENTRIES]>);

impl TableMemory for Mem {
    fn read(&self, mfn: u64, idx: usize) -> u64 {
        *usize::try_from(mfn)
            .ok()
            .and_then(|m| self.0.get(m))
            .and_then(|f| f.get(idx))
            .expect("policy read outside the machine")
    }
    fn write(&mut self, mfn: u64, idx: usize, val: u64) {
        *usize::try_from(mfn)
            .ok()
            .and_then(|m| self.0.get_mut(m))
            .and_then(|f| f.get_mut(idx))
            .expect("policy write outside the machine") = val;
    }
    fn flush_tlbs(&mut self, _req: microvisor_core::frametable::FlushRequest<'_>) {}
}

const fn ent(mfn: u64, flags: u64) -> u64 {
    (mfn << 12) | flags
}

const fn ma(mfn: u64, idx: usize) -> u64 {
    (mfn << 12) | (idx as u64 * 8)
}

const fn other(d: u16) -> u16 {
    if d == D1 { D2 } else { D1 }
}

struct Machine<'a> {
    ft: FrameTable<'a>,
    mem: Mem,
    base: [Option<u64>; 3],
}

impl<'a> Machine<'a> {
    /// Frames 0 and 1 are the hypervisor's, 2..33 D1's, 33..64 D2's; each
    /// domain starts on a four-level tree (L4 at 2 resp. 33, then L3, L2, L1
    /// mapping two writable and one read-only frame) as its base pointer.
    fn boot(pages: &'a mut [PageInfo]) -> Self {
        let mut m = Machine {
            ft: FrameTable::new(pages, HV),
            mem: Mem(vec![[0; ENTRIES]; N]),
            base: [None; 3],
        };
        m.ft.reserve_for_hypervisor(0).unwrap();
        m.ft.reserve_for_hypervisor(1).unwrap();
        for f in 2..N as u64 {
            m.ft.assign(f, if f < 33 { D1 } else { D2 }).unwrap();
        }
        for (d, b) in [(D1, 2u64), (D2, 33)] {
            for level in 0..3 {
                m.mem.write(b + level, 0, ent(b + level + 1, P | W | U));
            }
            m.mem.write(b + 3, 0, ent(b + 4, P | W | U));
            m.mem.write(b + 3, 1, ent(b + 5, P | W | U));
            m.mem.write(b + 3, 2, ent(b + 6, P | U));
            m.ft.new_baseptr(&mut m.mem, d, b, None).unwrap();
            m.base[usize::from(d)] = Some(b);
        }
        m
    }

    fn externals(&self) -> Vec<(u64, ExternalRef)> {
        self.base
            .iter()
            .flatten()
            .map(|&m| (m, ExternalRef::PageAndType(PageType::L4)))
            .collect()
    }

    fn drop_base(&mut self, d: u16) {
        if let Some(b) = self.base[usize::from(d)].take() {
            self.ft.put_page_and_type(&mut self.mem, b);
        }
    }

    /// The domain issuing an operation on frame `m`: its owner, or the other
    /// domain when `wrong`.
    fn issuer(&self, m: u64, wrong: bool) -> u16 {
        let owner = self.ft.owner(m).filter(|&o| o < DOMID_SELF).unwrap_or(D1);
        if wrong { other(owner) } else { owner }
    }
}

fn dom(u: &mut Unstructured) -> Result<u16> {
    Ok(if u.arbitrary()? { D1 } else { D2 })
}

/// Mostly a few frames of each domain, so that structures form.
fn hot(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0..=8u8)? {
        0..=3 => u.int_in_range(2..=9u64)?,
        4..=7 => u.int_in_range(33..=40u64)?,
        _ => u.int_in_range(0..=69u64)?,
    })
}

fn idx(u: &mut Unstructured) -> Result<usize> {
    Ok(match u.int_in_range(0..=13u8)? {
        0..=7 => u.int_in_range(0..=2usize)?,
        8 => 255,
        9 => 256,
        10 => 271,
        11 => 272,
        12 => 511,
        _ => u.int_in_range(0..=ENTRIES - 1)?,
    })
}

/// An entry: mostly plausible, sometimes with forbidden bits, sometimes
/// non-present garbage, sometimes anything at all.
fn entry(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0..=15u8)? {
        0..=9 => {
            let m = hot(u)?;
            let flags: u8 = u.arbitrary()?;
            let mut f = P;
            for (bit, v) in [(0, W), (1, U), (2, A | D), (3, NX)] {
                if flags & (1 << bit) != 0 {
                    f |= v;
                }
            }
            ent(m, f)
        }
        10 => {
            let m = hot(u)?;
            let bad = [PWT, PCD, PSE, G, BIT62][u.choose_index(5)?];
            ent(m, P | U | bad | if u.arbitrary()? { W } else { 0 })
        }
        11 => u.arbitrary::<u64>()? & !P,
        12 => u.arbitrary()?,
        _ => 0,
    })
}

fn va(u: &mut Unstructured) -> Result<u64> {
    let l4 = [0u64, 0, 0, 0, 1, 2, 255, 256, 511][u.choose_index(9)?];
    let l3 = if u.ratio(1, 5)? {
        u.int_in_range(1..=2u64)?
    } else {
        0
    };
    let l2 = if u.ratio(1, 5)? {
        u.int_in_range(1..=2u64)?
    } else {
        0
    };
    let l1 = u.int_in_range(0..=3u64)?;
    let va = (l4 << 39) | (l3 << 30) | (l2 << 21) | (l1 << 12);
    Ok(if l4 >= 256 {
        va | 0xFFFF_0000_0000_0000
    } else {
        va
    })
}

fn wrong(u: &mut Unstructured) -> Result<bool> {
    u.ratio(1, 10)
}

/// Decodes and applies one operation; `Ok(Err(e))` is the error it produced.
fn step(m: &mut Machine, u: &mut Unstructured) -> Result<core::result::Result<(), Errno>> {
    Ok(match u.int_in_range(0..=40u8)? {
        0 => {
            let (f, d) = (u.int_in_range(0..=69u64)?, dom(u)?);
            m.ft.assign(f, d)
        }
        1 => {
            let (w, f) = (wrong(u)?, hot(u)?);
            m.ft.release(f, m.issuer(f, w))
        }
        2..=5 => {
            let (w, f) = (wrong(u)?, hot(u)?);
            let level = if u.ratio(9, 10)? {
                u.int_in_range(1..=4u8)?
            } else {
                u.int_in_range(0..=5u8)?
            };
            let d = m.issuer(f, w);
            m.ft.pin(&mut m.mem, d, f, level)
        }
        6..=8 => {
            let (w, f) = (wrong(u)?, hot(u)?);
            let d = m.issuer(f, w);
            m.ft.unpin(&mut m.mem, d, f)
        }
        9..=24 => {
            let (w, foreign, table, i, val, preserve) = (
                wrong(u)?,
                u.ratio(1, 10)?,
                hot(u)?,
                idx(u)?,
                entry(u)?,
                u.arbitrary()?,
            );
            let d = m.issuer(table, w);
            let pg_owner = if foreign { other(d) } else { d };
            // Now and then an entry address that is not 8-byte aligned.
            let addr = if u.ratio(1, 50)? {
                ma(table, i) | u.int_in_range(1..=7u64)?
            } else {
                ma(table, i)
            };
            m.ft.mod_entry(&mut m.mem, d, pg_owner, addr, val, preserve)
                .map(|_| ())
        }
        25..=28 => {
            // The guest writes through a writable mapping it could hold:
            // into any frame of its own that is not a page table in use.
            let (f, i, v) = (hot(u)?, idx(u)?, entry(u)?);
            let writable = m.ft.info(f).is_some_and(|p| {
                p.owner() < DOMID_SELF
                    && !p.is_dying()
                    && (p.type_count() == 0 || p.page_type() == PageType::Writable)
            });
            if writable {
                m.mem.write(f, i, v);
            }
            Ok(())
        }
        29..=31 => {
            let (w, f) = (wrong(u)?, hot(u)?);
            let d = m.issuer(f, w);
            let old = m.base[usize::from(d)];
            m.ft.new_baseptr(&mut m.mem, d, f, old)
                .map(|()| m.base[usize::from(d)] = Some(f))
        }
        32 => {
            let d = dom(u)?;
            m.drop_base(d);
            Ok(())
        }
        33..=37 => {
            let (d, v, e) = (dom(u)?, va(u)?, entry(u)?);
            match m.base[usize::from(d)] {
                Some(l4) => {
                    m.ft.update_va_mapping(&mut m.mem, d, d, l4, v, e)
                        .map(|_| ())
                }
                None => Err(Errno::EINVAL),
            }
        }
        38 => {
            let (d, drop_first) = (dom(u)?, u.arbitrary()?);
            if drop_first {
                m.drop_base(d);
            }
            let mut freed = Vec::new();
            m.ft.relinquish_domain(&mut m.mem, d, |f| freed.push(f));
            for f in freed {
                assert_eq!(
                    m.ft.info(f),
                    Some(PageInfo::FREE),
                    "frame {f} freed but not free"
                );
            }
            Ok(())
        }
        _ => {
            // A CPU flushed: the TLB-flush clock moves on.
            let _ = m.ft.tlb_clock().tick();
            Ok(())
        }
    })
}

fn run(u: &mut Unstructured) {
    let mut pages = vec![PageInfo::default(); N];
    let mut m = Machine::boot(&mut pages);
    m.ft.audit(&m.mem, &m.externals())
        .expect("audit after boot");
    let mut n = 0;
    while !u.is_empty() && n < 200 {
        n += 1;
        let Ok(r) = step(&mut m, u) else { break };
        if let Err(e) = r {
            assert!(EXPECTED.contains(&e), "step {n}: unexpected {e:?}");
        }
        if let Err(e) = m.ft.audit(&m.mem, &m.externals()) {
            panic!("step {n}: audit: {e}");
        }
    }
    // Tear both domains down: every frame but the hypervisor's ends free.
    m.drop_base(D1);
    m.drop_base(D2);
    for d in [D1, D2, D1, D2] {
        m.ft.relinquish_domain(&mut m.mem, d, |_| {});
        if let Err(e) = m.ft.audit(&m.mem, &[]) {
            panic!("teardown of {d}: audit: {e}");
        }
    }
    for f in 2..N as u64 {
        assert_eq!(m.ft.info(f), Some(PageInfo::FREE), "frame {f} not freed");
    }
}

fuzz_target!(|bytes: &[u8]| {
    run(&mut Unstructured::new(bytes));
});
