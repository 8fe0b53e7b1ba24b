//! Property test: random sequences of grant writes (well-behaved and
//! hostile), revocations, maps, unmaps, copies, table growth, frame-table
//! operations by the granters (give a frame back, pin it as a page table)
//! and domain deaths never panic, only ever fail with the statuses the
//! policy documents for each operation, and leave after every single step:
//! a clean frame-table audit with the grants' external references, pins that
//! match the mappings exactly, `GTF_reading`/`GTF_writing` set exactly while
//! pinned, installed entries that match the live mappings, and freed frames
//! the policy never touched again.

use std::collections::HashMap;
use std::vec;
use std::vec::Vec;

use guest_abi::grant_table::{
    GNTST_BAD_COPY_ARG, GNTST_BAD_DEV_ADDR, GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_BAD_HANDLE,
    GNTST_BAD_PAGE, GNTST_GENERAL_ERROR, GNTST_NO_SPACE, GNTST_PERMISSION_DENIED, GTF_READONLY,
};
use proptest::prelude::*;

use super::tests::{
    D0, D1, D2, D3, DOMID_IO, DOMS, Mem, N, World, audit, base, boot, data, install, map_op,
    remove, setup_op, table_frame, unmap_op,
};
use super::*;
use crate::frametable::{HV_L4_SLOTS, PageInfo};

/// Byte written over frames once they are freed.
const CANARY: u8 = 0xFF;

/// A frame, relative to the domain acting.
#[derive(Clone, Copy, Debug)]
enum FrameSel {
    /// Data frame `i` of the acting domain (frame `i` itself for one that
    /// owns none).
    Own(u64),
    /// Any frame number (another domain's, the hypervisor's, free, absent).
    Abs(u64),
}

impl FrameSel {
    fn resolve(self, d: u16) -> u64 {
        match self {
            Self::Own(i) if (1..=3).contains(&d) => data(d, i),
            Self::Own(i) => i,
            Self::Abs(m) => m,
        }
    }
}

#[derive(Clone, Debug)]
enum Side {
    /// A grant reference of `dom`.
    Gref { dom: u16, gref: u32 },
    /// A frame named directly, with `self_id` saying `DOMID_SELF` (else the
    /// caller's own id, which is refused).
    Frame { mfn: FrameSel, self_id: bool },
}

#[derive(Clone, Debug)]
enum Op {
    /// The granter writes an entry. The hypervisor-owned in-use bits are
    /// kept as they are (their loss is a unit test of its own).
    Grant {
        g: u16,
        gref: u32,
        flags: u16,
        to: u16,
        frame: FrameSel,
    },
    /// A well-behaved granter ends access (refused while in use).
    EndAccess {
        g: u16,
        gref: u32,
    },
    /// `caller: None` is a cooperative grantee: whoever the entry names.
    Map {
        caller: Option<u16>,
        g: u16,
        gref: u32,
        flags: u32,
        slot: u64,
        misalign: bool,
        install_ok: bool,
    },
    Unmap {
        caller: u16,
        live: bool,
        sel: u32,
        /// 0: the mapped address, 1: another address, 2: zero.
        addr: u8,
        /// 0: none, 1: the right one, 2: a wrong one.
        dev: u8,
        remove_ok: bool,
    },
    /// `caller: None`: whoever a grant side's entry names.
    Copy {
        caller: Option<u16>,
        src: Side,
        dst: Side,
        src_off: u16,
        dst_off: u16,
        len: u16,
    },
    Grow {
        d: u16,
        nr: u32,
        /// The allocation (from the start of the op) that fails, if any.
        oom: Option<u32>,
    },
    /// `decrease_reservation` of a data frame by its owner.
    GiveBack {
        d: u16,
        i: u64,
    },
    PinL1 {
        d: u16,
        i: u64,
    },
    Unpin {
        d: u16,
        i: u64,
    },
    Die(u16),
}

fn dom() -> impl Strategy<Value = u16> {
    prop_oneof![
        8 => 1u16..=3,
        1 => Just(D0),
        1 => prop_oneof![Just(9u16), Just(DOMID_SELF), Just(DOMID_IO)],
    ]
}

/// A domain named as granter: almost always one with a table.
fn granter() -> impl Strategy<Value = u16> {
    prop_oneof![12 => 1u16..=3, 1 => dom()]
}

fn live_dom() -> impl Strategy<Value = u16> {
    prop_oneof![6 => 1u16..=3, 1 => Just(D0)]
}

/// The domain issuing a map or copy; `None` resolves to the grantee the
/// entry names (see [`grantee`]).
fn caller() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![3 => Just(None), 1 => live_dom().prop_map(Some)]
}

/// The domain entry `gref` of `g` currently names, if it is one of ours;
/// else D1.
fn grantee(mem: &Mem, w: &World, g: u16, gref: u32) -> u16 {
    w.tables
        .get(usize::from(g))
        .and_then(|t| t.as_deref())
        .filter(|t| !t.is_dying())
        .and_then(|t| t.locate_v1(gref))
        .map(|(tf, slot)| mem.read_entry(tf, slot).domid)
        .filter(|&d| d <= D3)
        .unwrap_or(D1)
}

/// Mostly a few hot references, so that grants, maps and copies meet.
fn gref() -> impl Strategy<Value = u32> {
    prop_oneof![
        24 => 8u32..11,
        1 => 0u32..8,
        1 => prop_oneof![Just(511u32), Just(512u32), Just(1023u32), any::<u32>()],
    ]
}

/// Data frames (never table frames), mostly the acting domain's, some
/// another domain's or bad ones.
fn frame() -> impl Strategy<Value = FrameSel> {
    prop_oneof![
        12 => (0u64..6).prop_map(FrameSel::Own),
        1 => (1u16..=3, 0u64..6).prop_map(|(d, i)| FrameSel::Abs(data(d, i))),
        1 => prop_oneof![Just(0u64), Just(63u64), Just(1000u64), Just(u64::from(u32::MAX))]
            .prop_map(FrameSel::Abs),
    ]
}

fn entry_flags() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => Just(GTF_PERMIT_ACCESS),
        3 => Just(GTF_PERMIT_ACCESS | GTF_READONLY),
        1 => Just(0u16),
        1 => Just(GTF_PERMIT_ACCESS | GTF_SUB_PAGE),
        1 => any::<u16>(),
    ]
}

fn map_flags() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => Just(GNTMAP_HOST_MAP),
        6 => Just(GNTMAP_HOST_MAP | GNTMAP_READONLY),
        1 => Just(GNTMAP_HOST_MAP | GNTMAP_CONTAINS_PTE),
        1 => Just(GNTMAP_DEVICE_MAP),
        1 => Just(GNTMAP_DEVICE_MAP | GNTMAP_READONLY),
        2 => Just(GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP),
        1 => Just(0u32),
        1 => any::<u32>(),
    ]
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![
        (granter(), gref()).prop_map(|(dom, gref)| Side::Gref { dom, gref }),
        (frame(), prop::bool::weighted(0.95))
            .prop_map(|(mfn, self_id)| Side::Frame { mfn, self_id }),
    ]
}

fn offset() -> impl Strategy<Value = u16> {
    prop_oneof![
        8 => Just(0u16),
        8 => Just(100u16),
        2 => Just(4000u16),
        1 => Just(4095u16),
        1 => Just(4096u16),
        1 => any::<u16>(),
    ]
}

fn len() -> impl Strategy<Value = u16> {
    prop_oneof![
        2 => Just(0u16),
        2 => Just(1u16),
        8 => Just(96u16),
        2 => Just(4096u16),
        1 => any::<u16>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (live_dom(), gref(), entry_flags(), live_dom(), frame())
            .prop_map(|(g, gref, flags, to, frame)| Op::Grant { g, gref, flags, to, frame }),
        1 => (live_dom(), gref()).prop_map(|(g, gref)| Op::EndAccess { g, gref }),
        8 => (
            caller(),
            granter(),
            gref(),
            map_flags(),
            0u64..6,
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.95),
        )
            .prop_map(|(caller, g, gref, flags, slot, misalign, install_ok)| Op::Map {
                caller, g, gref, flags, slot, misalign, install_ok,
            }),
        6 => (
            live_dom(),
            prop::bool::weighted(0.85),
            0u32..1100,
            0u8..3,
            0u8..3,
            prop::bool::weighted(0.9),
        )
            .prop_map(|(caller, live, sel, addr, dev, remove_ok)| Op::Unmap {
                caller,
                live,
                sel,
                addr: if addr == 2 && sel % 4 != 0 { 0 } else { addr },
                dev: if dev != 0 && sel % 3 != 0 { 0 } else { dev },
                remove_ok,
            }),
        5 => (caller(), side(), side(), offset(), offset(), len())
            .prop_map(|(caller, src, dst, src_off, dst_off, len)| Op::Copy {
                caller, src, dst, src_off, dst_off, len,
            }),
        1 => (1u16..=3, 0u32..6, proptest::option::of(0u32..3))
            .prop_map(|(d, nr, oom)| Op::Grow { d, nr, oom }),
        1 => (1u16..=3, 0u64..6).prop_map(|(d, i)| Op::GiveBack { d, i }),
        1 => (1u16..=3, 0u64..6).prop_map(|(d, i)| Op::PinL1 { d, i }),
        1 => (1u16..=3, 0u64..6).prop_map(|(d, i)| Op::Unpin { d, i }),
        1 => (0u16..=3).prop_map(Op::Die),
    ]
}

/// Where domain `d` maps its `slot`-th page (disjoint per domain).
fn host_addr(d: u16, slot: u64) -> u64 {
    0x4000_0000 + u64::from(d) * 0x100_0000 + slot * 0x1000
}

/// The world as one operation sees it through per-domain locks: only the
/// domains of its [`Reach`]. The policy asking for any other domain fails
/// the test (a hypervisor holding just those locks would answer `None`).
struct Only<'a> {
    w: &'a mut World,
    reach: Reach,
}

impl Domains for Only<'_> {
    fn get(&mut self, dom: u16) -> Option<&mut GrantTable> {
        assert!(
            self.reach.contains(dom),
            "the policy reached domain {dom} outside {:?}",
            self.reach
        );
        self.w.get(dom)
    }
}

/// `w` as an operation reaching `reach` sees it.
fn only(w: &mut World, reach: Reach) -> Only<'_> {
    Only { w, reach }
}

struct Sim {
    dead: [bool; 4],
    /// Frames freed by a domain's death (filled with the canary).
    freed: Vec<u64>,
}

fn die(ft: &FrameTable<'_>, mem: &mut Mem, w: &mut World, sim: &mut Sim, d: u16) {
    // As the hypervisor does it: the table, then each handle, each with the
    // domains it reaches.
    let _ = release_table(&mut only(w, Reach::one(d)), ft, mem, d);
    for handle in 0..MAPTRACK_ENTRIES {
        let reach = reach_unmap(w.tables[usize::from(d)].as_deref(), d, handle);
        release_mapping(&mut only(w, reach), ft, mem, d, handle);
    }
    sim.dead[usize::from(d)] = true;
    // Its page tables are torn down: the installed entries go with them.
    let lo = host_addr(d, 0);
    let hi = host_addr(d + 1, 0);
    mem.ptes.retain(|&a, _| !(lo..hi).contains(&a));
    collect(ft, mem, sim);
}

/// Frees what dead domains no longer have referenced, canary-filling it.
fn collect(ft: &FrameTable<'_>, mem: &mut Mem, sim: &mut Sim) {
    for d in DOMS {
        if !sim.dead[usize::from(d)] {
            continue;
        }
        let mut freed = Vec::new();
        let _ = ft.relinquish_domain(mem, d, |m| freed.push(m));
        for m in freed {
            mem.frames[m as usize].fill(CANARY);
            sim.freed.push(m);
        }
    }
}

fn step(ft: &FrameTable<'_>, mem: &mut Mem, w: &mut World, sim: &mut Sim, op: &Op) {
    match *op {
        Op::Grant {
            g,
            gref,
            flags,
            to,
            frame,
        } => {
            if sim.dead[usize::from(g)] {
                return;
            }
            let Some((tf, slot)) = w.t(g).locate_v1(gref) else {
                return;
            };
            let keep = mem.read_entry(tf, slot).flags & (GTF_READING | GTF_WRITING);
            let flags = (flags & !(GTF_READING | GTF_WRITING)) | keep;
            mem.write_entry(
                tf,
                slot,
                GrantEntryV1 {
                    flags,
                    domid: to,
                    frame: frame.resolve(g) as u32,
                },
            );
        }
        Op::EndAccess { g, gref } => {
            if sim.dead[usize::from(g)] {
                return;
            }
            let Some((tf, slot)) = w.t(g).locate_v1(gref) else {
                return;
            };
            let e = mem.read_entry(tf, slot);
            if e.flags & (GTF_READING | GTF_WRITING) == 0 {
                let old = entry_header(e.flags, e.domid);
                let _ = mem.cmpxchg_header(tf, slot, old, entry_header(0, e.domid));
            }
        }
        Op::Map {
            caller,
            g,
            gref,
            flags,
            slot,
            misalign,
            install_ok,
        } => {
            let caller = caller.unwrap_or_else(|| grantee(mem, w, g, gref));
            let mut addr = host_addr(caller, slot);
            if misalign {
                addr += 4;
            }
            let op = map_op(g, gref, flags, addr);
            let reach = reach_map(caller, &op);
            let r = if install_ok {
                map_grant_ref(&mut only(w, reach), ft, mem, caller, &op, install)
            } else {
                map_grant_ref(&mut only(w, reach), ft, mem, caller, &op, |_, _, _| false)
            };
            match r {
                Ok(m) => {
                    assert_eq!(m.granter, g);
                    assert_eq!(ft.owner(m.mfn), Some(g));
                    if !m.readonly() {
                        assert_eq!(ft.info(m.mfn).unwrap().page_type(), PageType::Writable);
                    }
                    assert!(!sim.dead[usize::from(caller)] && !sim.dead[usize::from(g)]);
                }
                Err(s) => assert!(
                    [
                        GNTST_BAD_GNTREF,
                        GNTST_GENERAL_ERROR,
                        GNTST_BAD_DOMAIN,
                        GNTST_NO_SPACE,
                        GNTST_BAD_PAGE
                    ]
                    .contains(&s),
                    "map status {s}"
                ),
            }
        }
        Op::Unmap {
            caller,
            live,
            sel,
            addr,
            dev,
            remove_ok,
        } => {
            let t = w.t(caller);
            let handles: Vec<Mapping> =
                (0..MAPTRACK_ENTRIES).filter_map(|h| t.mapping(h)).collect();
            let target = if live && !handles.is_empty() {
                Some(handles[sel as usize % handles.len()])
            } else {
                None
            };
            let handle = target.map_or(sel, |m| m.handle);
            let before = t.mapping(handle);
            let right = target.map_or(host_addr(caller, 0), |m| m.host_addr);
            let host = match addr {
                0 => right,
                1 => right + 0x1000,
                _ => 0,
            };
            let dev_addr = match (dev, target) {
                (1, Some(m)) => m.dev_bus_addr(),
                (2, _) => 0x1000,
                _ => 0,
            };
            let op = GnttabUnmapGrantRef {
                dev_bus_addr: dev_addr,
                ..unmap_op(handle, host)
            };
            let reach = reach_unmap(w.tables[usize::from(caller)].as_deref(), caller, handle);
            let r = if remove_ok {
                unmap_grant_ref(&mut only(w, reach), ft, mem, caller, &op, remove)
            } else {
                unmap_grant_ref(&mut only(w, reach), ft, mem, caller, &op, |_, _, _| false)
            };
            match r {
                Ok(flush) => {
                    // Each half goes only when its address is given.
                    let m = before.expect("a live handle");
                    let host_gone = host != 0 && m.has_host();
                    let dev_gone = dev_addr != 0 && m.has_device();
                    let left = m.halves() - host_gone as u32 - dev_gone as u32;
                    assert_eq!(flush.is_needed(), host_gone);
                    assert_eq!(w.t(caller).mapping(handle).is_none(), left == 0);
                    if let Some(now) = w.t(caller).mapping(handle) {
                        assert_eq!(now.halves(), left);
                    }
                }
                Err(s) => assert!(
                    [GNTST_BAD_HANDLE, GNTST_GENERAL_ERROR, GNTST_BAD_DEV_ADDR].contains(&s),
                    "unmap status {s}"
                ),
            }
        }
        Op::Copy {
            caller,
            ref src,
            ref dst,
            src_off,
            dst_off,
            len,
        } => {
            let caller = caller.unwrap_or_else(|| match (src, dst) {
                (&Side::Gref { dom, gref }, _) | (_, &Side::Gref { dom, gref }) => {
                    grantee(mem, w, dom, gref)
                }
                _ => D1,
            });
            let mut flags = 0;
            let mut ptr = |s: &Side, gref_flag: u16, off: u16| match *s {
                Side::Gref { dom, gref } => {
                    flags |= gref_flag;
                    GnttabCopyPtr {
                        u: u64::from(gref),
                        domid: dom,
                        offset: off,
                        _pad: 0,
                    }
                }
                Side::Frame { mfn, self_id } => GnttabCopyPtr {
                    u: mfn.resolve(caller),
                    domid: if self_id { DOMID_SELF } else { caller },
                    offset: off,
                    _pad: 0,
                },
            };
            let source = ptr(src, GNTCOPY_SOURCE_GREF, src_off);
            let dest = ptr(dst, GNTCOPY_DEST_GREF, dst_off);
            let op = GnttabCopy {
                source,
                dest,
                len,
                flags,
                ..Default::default()
            };
            let reach = reach_copy(caller, &op);
            if let Err(s) = copy(&mut only(w, reach), ft, mem, caller, &op) {
                assert!(
                    [
                        GNTST_PERMISSION_DENIED,
                        GNTST_BAD_DOMAIN,
                        GNTST_BAD_GNTREF,
                        GNTST_GENERAL_ERROR,
                        GNTST_BAD_PAGE,
                        GNTST_BAD_COPY_ARG
                    ]
                    .contains(&s),
                    "copy status {s}"
                );
            }
        }
        Op::Grow { d, nr, oom } => {
            use crate::fallible::inject;
            // The caller hands out each frame once.
            let mut next = (w.t(d).nr_frames() == 1).then(|| table_frame(d, 1));
            let before = w.t(d).nr_frames();
            // Maybe the heap runs out during the growth.
            inject::fail_nth(oom);
            let reach = reach_target(d, DOMID_SELF);
            let r = setup_table(
                &mut only(w, reach),
                ft,
                mem,
                d,
                &setup_op(DOMID_SELF, nr),
                false,
                || next.take(),
            );
            let fired = oom.is_some() && !inject::pending();
            inject::fail_nth(None);
            if let Err(s) = r {
                assert_eq!(s, GNTST_GENERAL_ERROR);
            }
            if fired {
                // Growth needs memory only for a frame it adds, and adds
                // none it has no memory for.
                assert!(r.is_err());
                assert_eq!(w.t(d).nr_frames(), before);
            }
        }
        Op::GiveBack { d, i } => {
            let mfn = data(d, i);
            if ft.release(mfn, d).is_ok() {
                // Nobody may hold a grant reference on it.
                for t in w.tables.iter().flatten() {
                    assert!(t.external_refs().all(|(m, _)| m != mfn));
                }
                // Give it straight back, so the world keeps its shape.
                ft.assign(mfn, d).unwrap();
            }
        }
        Op::PinL1 { d, i } => {
            let _ = ft.pin(mem, d, data(d, i), 1);
        }
        Op::Unpin { d, i } => {
            let _ = ft.unpin(mem, d, data(d, i));
        }
        Op::Die(d) => die(ft, mem, w, sim, d),
    }
    collect(ft, mem, sim);
}

/// Every invariant the module promises, after any step.
fn check(ft: &FrameTable<'_>, mem: &Mem, w: &World, sim: &Sim) {
    audit(ft, mem, w);
    // Pins match the mappings exactly: (granter, gref) -> (readonly, writable).
    let mut want: HashMap<(u16, u32), (u32, u32, u16)> = HashMap::new();
    let mut ptes = HashMap::new();
    for (d, t) in w.tables.iter().enumerate() {
        let t = t.as_deref().unwrap();
        let mut n = 0;
        for h in 0..MAPTRACK_ENTRIES {
            let Some(m) = t.mapping(h) else { continue };
            n += 1;
            let e = want.entry((m.granter, m.gref)).or_insert((0, 0, d as u16));
            assert_eq!(e.2, d as u16, "one grant pinned by two grantees");
            // One pin per mapped half.
            if m.readonly() {
                e.0 += m.halves();
            } else {
                e.1 += m.halves();
            }
            assert!(m.halves() > 0);
            if m.has_host() {
                assert!(m.host_addr % 8 == 0);
                ptes.insert(m.host_addr, m.pte());
            }
        }
        assert_eq!(n, t.nr_mappings());
        if sim.dead[d] {
            assert_eq!(n, 0, "dead domain {d} still maps");
        }
    }
    assert_eq!(ptes, mem.ptes, "installed entries differ from the mappings");
    for g in DOMS {
        let t = w.t(g);
        for gref in 0..t.nr_entries() {
            let p = t.pins(gref).unwrap();
            let (r, wr, grantee) = want.get(&(g, gref)).copied().unwrap_or((0, 0, 0));
            assert_eq!((p.readonly, p.writable), (r, wr), "pins of {g}:{gref}");
            if r + wr > 0 {
                assert_eq!(p.grantee, grantee);
            }
            if t.is_dying() {
                continue;
            }
            let (tf, slot) = t.locate_v1(gref).unwrap();
            let flags = mem.read_entry(tf, slot).flags;
            assert_eq!(flags & GTF_READING != 0, r + wr > 0, "reading {g}:{gref}");
            assert_eq!(flags & GTF_WRITING != 0, wr > 0, "writing {g}:{gref}");
        }
    }
    for &m in &sim.freed {
        assert!(
            mem.frames[m as usize].iter().all(|&b| b == CANARY),
            "freed frame {m} written"
        );
    }
}

fn run(ops: &[Op]) {
    let mut pages = vec![PageInfo::default(); N];
    let ft = FrameTable::new(&mut pages, [0; HV_L4_SLOTS]);
    let mut mem = Mem::new();
    let mut w = World { tables: Vec::new() };
    boot(&ft, &mut mem, &mut w);
    // Each domain starts out granting its hot references 8..=10 to the two
    // others and to itself (10 read-only), each on a frame of its own.
    for g in [D1, D2, D3] {
        for (k, gref) in (8u32..11).enumerate() {
            let k = k as u64;
            let to = 1 + (g + k as u16) % 3;
            let flags = GTF_PERMIT_ACCESS | if gref == 10 { GTF_READONLY } else { 0 };
            let (tf, slot) = w.t(g).locate_v1(gref).unwrap();
            let frame = u32::try_from(data(g, k)).unwrap();
            mem.write_entry(
                tf,
                slot,
                GrantEntryV1 {
                    flags,
                    domid: to,
                    frame,
                },
            );
        }
    }
    let mut sim = Sim {
        dead: [false; 4],
        freed: Vec::new(),
    };
    check(&ft, &mem, &w, &sim);
    for op in ops {
        step(&ft, &mut mem, &mut w, &mut sim, op);
        check(&ft, &mem, &w, &sim);
    }
    // Everyone dies: everything is released and every frame comes back.
    for d in DOMS {
        die(&ft, &mut mem, &mut w, &mut sim, d);
        check(&ft, &mem, &w, &sim);
    }
    for d in [D1, D2, D3] {
        assert_eq!(w.t(d).pinned_grants(), 0);
        for mfn in base(d)..base(d) + 20 {
            assert_eq!(ft.owner(mfn), Some(crate::frametable::OWNER_FREE), "{mfn}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn grant_random_sequences_keep_counts_exact(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops);
    }
}

#[test]
fn grant_sequence_granter_dies_mid_way() {
    run(&[
        Op::Grant {
            g: D1,
            gref: 8,
            flags: GTF_PERMIT_ACCESS,
            to: D2,
            frame: FrameSel::Own(0),
        },
        Op::Map {
            caller: Some(D2),
            g: D1,
            gref: 8,
            flags: GNTMAP_HOST_MAP,
            slot: 0,
            misalign: false,
            install_ok: true,
        },
        Op::Die(D1),
        Op::GiveBack { d: D1, i: 0 },
        Op::Unmap {
            caller: D2,
            live: true,
            sel: 0,
            addr: 0,
            dev: 0,
            remove_ok: true,
        },
    ]);
}
