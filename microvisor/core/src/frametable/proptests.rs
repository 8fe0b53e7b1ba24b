//! Property test: random sequences of guest and toolstack operations on a
//! small machine (64 frames, two domains, frames 64..70 outside the table)
//! never panic, only ever fail with the error codes the policy documents,
//! and leave a clean audit after every single step.

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::tests::{A, BIT62, D, D1, D2, G, HV, Mem, N, NX, P, PCD, PSE, PWT, U, W, ent, ma};
use super::*;

#[derive(Clone, Debug)]
enum Op {
    Assign(u64, u16),
    /// Operations naming a frame are issued by its owner, or by the other
    /// domain when `wrong` is set.
    Release {
        wrong: bool,
        mfn: u64,
    },
    Pin {
        wrong: bool,
        mfn: u64,
        level: u8,
    },
    Unpin {
        wrong: bool,
        mfn: u64,
    },
    /// `mmu_update` of entry `idx` of `table` (with the other domain as page
    /// owner if `foreign`).
    Mod {
        wrong: bool,
        foreign: bool,
        table: u64,
        idx: usize,
        val: u64,
        preserve: bool,
    },
    /// The guest writes through a writable mapping it could hold, i.e. into
    /// any frame of its own that is not a page table in use.
    Scribble(u64, usize, u64),
    BasePtr {
        wrong: bool,
        mfn: u64,
    },
    DropBase(u16),
    Uvm(u16, u64, u64),
    Relinquish(u16, bool),
    Flushed,
}

fn dom() -> impl Strategy<Value = u16> {
    prop_oneof![Just(D1), Just(D2)]
}

fn mfn() -> impl Strategy<Value = u64> {
    0u64..70
}

/// Mostly a few frames of each domain, so that structures form.
fn hot() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 2u64..10, 4 => 33u64..41, 1 => mfn()]
}

fn wrong() -> impl Strategy<Value = bool> {
    prop::bool::weighted(0.1)
}

fn idx() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..3,
        1 => Just(255usize),
        1 => Just(256usize),
        1 => Just(271usize),
        1 => Just(272usize),
        1 => Just(511usize),
        1 => 0usize..ENTRIES,
    ]
}

/// An entry value: mostly plausible, sometimes with forbidden bits, sometimes
/// non-present garbage.
fn entry() -> impl Strategy<Value = u64> {
    let bad = prop_oneof![Just(PWT), Just(PCD), Just(PSE), Just(G), Just(BIT62)];
    prop_oneof![
        10 => (hot(), prop::bool::weighted(0.3), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(m, rw, user, ad, nx)| {
                let mut f = P;
                if rw {
                    f |= W;
                }
                if user {
                    f |= U;
                }
                if ad {
                    f |= A | D;
                }
                if nx {
                    f |= NX;
                }
                ent(m, f)
            }),
        1 => (hot(), any::<bool>(), bad)
            .prop_map(|(m, rw, b)| ent(m, P | U | b | if rw { W } else { 0 })),
        1 => any::<u64>().prop_map(|v| v & !P),
        2 => Just(0u64),
    ]
}

fn va() -> impl Strategy<Value = u64> {
    (
        prop_oneof![12 => Just(0u64), 2 => 1u64..3, 1 => Just(255), 1 => Just(256), 1 => Just(511)],
        prop_oneof![4 => Just(0u64), 1 => 1u64..3],
        prop_oneof![4 => Just(0u64), 1 => 1u64..3],
        0u64..4,
    )
        .prop_map(|(l4, l3, l2, l1)| {
            let va = (l4 << 39) | (l3 << 30) | (l2 << 21) | (l1 << 12);
            if l4 >= 256 {
                va | 0xFFFF_0000_0000_0000
            } else {
                va
            }
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (mfn(), dom()).prop_map(|(m, d)| Op::Assign(m, d)),
        1 => (wrong(), hot()).prop_map(|(wrong, mfn)| Op::Release { wrong, mfn }),
        4 => (wrong(), hot(), prop_oneof![9 => 1u8..5, 1 => 0u8..6])
            .prop_map(|(wrong, mfn, level)| Op::Pin { wrong, mfn, level }),
        3 => (wrong(), hot()).prop_map(|(wrong, mfn)| Op::Unpin { wrong, mfn }),
        16 => (wrong(), prop::bool::weighted(0.1), hot(), idx(), entry(), any::<bool>())
            .prop_map(|(wrong, foreign, table, idx, val, preserve)| Op::Mod {
                wrong,
                foreign,
                table,
                idx,
                val,
                preserve,
            }),
        4 => (hot(), idx(), entry()).prop_map(|(m, i, v)| Op::Scribble(m, i, v)),
        3 => (wrong(), hot()).prop_map(|(wrong, mfn)| Op::BasePtr { wrong, mfn }),
        1 => dom().prop_map(Op::DropBase),
        5 => (dom(), va(), entry()).prop_map(|(d, v, e)| Op::Uvm(d, v, e)),
        1 => (dom(), any::<bool>()).prop_map(|(d, b)| Op::Relinquish(d, b)),
        1 => Just(Op::Flushed),
    ]
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
    /// Frames 0 and 1 are the hypervisor's, 2..33 D1's, 33..64 D2's. Each
    /// domain starts with a four-level tree (L4 at 2 resp. 33, then L3, L2,
    /// L1, two writable and one read-only data frame) as its base pointer.
    fn boot(pages: &'a mut [PageInfo]) -> Self {
        let mut m = Machine {
            ft: FrameTable::new(pages, HV),
            mem: Mem::new(N),
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
            *m.base_of(d) = Some(b);
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

    fn base_of(&mut self, d: u16) -> &mut Option<u64> {
        &mut self.base[usize::from(d)]
    }

    fn drop_base(&mut self, d: u16) {
        if let Some(b) = self.base_of(d).take() {
            self.ft.put_page_and_type(&mut self.mem, b);
        }
    }

    /// The domain issuing an operation on frame `m`.
    fn issuer(&self, m: u64, wrong: bool) -> u16 {
        let owner = self.ft.owner(m).filter(|&o| o < DOMID_SELF).unwrap_or(D1);
        if wrong { other(owner) } else { owner }
    }

    /// Applies one operation; returns the error it produced, if any.
    fn apply(&mut self, op: &Op) -> Result<(), Errno> {
        match *op {
            Op::Assign(m, d) => self.ft.assign(m, d),
            Op::Release { wrong, mfn } => self.ft.release(mfn, self.issuer(mfn, wrong)),
            Op::Pin { wrong, mfn, level } => {
                let d = self.issuer(mfn, wrong);
                self.ft.pin(&mut self.mem, d, mfn, level)
            }
            Op::Unpin { wrong, mfn } => {
                let d = self.issuer(mfn, wrong);
                self.ft.unpin(&mut self.mem, d, mfn)
            }
            Op::Mod {
                wrong,
                foreign,
                table,
                idx,
                val,
                preserve,
            } => {
                let dom = self.issuer(table, wrong);
                let pg_owner = if foreign { other(dom) } else { dom };
                self.ft
                    .mod_entry(&mut self.mem, dom, pg_owner, ma(table, idx), val, preserve)
                    .map(|_flush| ())
            }
            Op::Scribble(m, i, v) => {
                let writable = self.ft.info(m).is_some_and(|p| {
                    p.owner() < DOMID_SELF
                        && !p.is_dying()
                        && (p.type_count() == 0 || p.page_type() == PageType::Writable)
                });
                if writable {
                    self.mem.write(m, i, v);
                }
                Ok(())
            }
            Op::BasePtr { wrong, mfn } => {
                let d = self.issuer(mfn, wrong);
                let old = *self.base_of(d);
                self.ft.new_baseptr(&mut self.mem, d, mfn, old)?;
                *self.base_of(d) = Some(mfn);
                Ok(())
            }
            Op::DropBase(d) => {
                self.drop_base(d);
                Ok(())
            }
            Op::Uvm(d, va, e) => {
                let Some(l4) = *self.base_of(d) else {
                    return Err(Errno::EINVAL);
                };
                self.ft
                    .update_va_mapping(&mut self.mem, d, d, l4, va, e)
                    .map(|_flush| ())
            }
            Op::Relinquish(d, drop_first) => {
                if drop_first {
                    self.drop_base(d);
                }
                let mut freed = Vec::new();
                self.ft
                    .relinquish_domain(&mut self.mem, d, |m| freed.push(m));
                for m in freed {
                    // Free, stamped until it is handed out again.
                    let free = self.ft.info(m).map(|p| p.owner());
                    assert_eq!(free, Some(OWNER_FREE));
                    self.ft.reuse(&mut self.mem, m, 1);
                    assert_eq!(self.ft.info(m), Some(PageInfo::FREE));
                }
                Ok(())
            }
            Op::Flushed => {
                self.mem.tlb_time = self.ft.tlb_clock().tick();
                Ok(())
            }
        }
    }
}

/// Errors the policy documents for these operations.
const EXPECTED: [Errno; 3] = [Errno::EINVAL, Errno::EBUSY, Errno::EPERM];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(1024)))]

    #[test]
    fn random_operations_keep_the_audit_clean(ops in prop::collection::vec(op(), 1..120)) {
        let mut pages = vec![PageInfo::default(); N];
        let mut m = Machine::boot(&mut pages);
        prop_assert!(m.ft.audit(&m.mem, &m.externals()).is_ok());
        for (step, op) in ops.iter().enumerate() {
            if let Err(e) = m.apply(op) {
                prop_assert!(EXPECTED.contains(&e), "step {step} {op:?}: unexpected {e:?}");
            }
            if let Err(e) = m.ft.audit(&m.mem, &m.externals()) {
                prop_assert!(false, "step {step} {op:?}: audit: {e}");
            }
        }
        // Tear both domains down: every frame but the hypervisor's ends free.
        m.drop_base(D1);
        m.drop_base(D2);
        for d in [D1, D2, D1, D2] {
            m.ft.relinquish_domain(&mut m.mem, d, |_| {});
            prop_assert!(m.ft.audit(&m.mem, &[]).is_ok());
        }
        // Handed out again: the freed frames' TLB stamps go.
        m.ft.reuse(&mut m.mem, 2, N as u64 - 2);
        for f in 2..N as u64 {
            prop_assert_eq!(m.ft.info(f), Some(PageInfo::FREE), "frame {} not freed", f);
        }
    }
}
