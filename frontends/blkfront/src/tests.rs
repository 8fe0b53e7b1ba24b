//! Host tests: the front-end against a simulated back-end sharing an
//! in-memory ring page, guest memory and grant table.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use guest_abi::io::blkif::{
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, VDISK_READONLY,
};
use guest_abi::io::ring::BackRing;
use guest_abi::io::ring::testing::MemPage;
use proptest::prelude::*;

use super::*;
use crate::xenbus::{XenbusError, XenbusState, backend_connected, frontend_entries, parse_backend};

const PAGE: usize = 4096;
const SECTOR: usize = 512;
const RSP_PROD: usize = 8;

/// The ring page; both ends hold a clone.
type Page = MemPage;

struct GrantEntry {
    gfn: u64,
    readonly: bool,
    mapped: bool,
}

/// Guest memory (gfn → page) and the guest's grant table.
struct World {
    frames: HashMap<u64, Vec<u8>>,
    grants: HashMap<u32, GrantEntry>,
    next_ref: u32,
    limit: usize,
}

#[derive(Clone)]
struct TestGrants(Rc<RefCell<World>>);

impl Grants for TestGrants {
    fn grant(&mut self, gfn: u64, readonly: bool) -> Result<u32, GrantError> {
        let mut w = self.0.borrow_mut();
        if w.grants.len() >= w.limit {
            return Err(GrantError::Exhausted);
        }
        w.next_ref += 1;
        let gref = w.next_ref;
        w.grants.insert(
            gref,
            GrantEntry {
                gfn,
                readonly,
                mapped: false,
            },
        );
        Ok(gref)
    }
    fn end(&mut self, gref: u32) -> Result<(), GrantError> {
        let mut w = self.0.borrow_mut();
        match w.grants.get(&gref) {
            None => Err(GrantError::BadRef),
            Some(g) if g.mapped => Err(GrantError::InUse),
            Some(_) => {
                w.grants.remove(&gref);
                Ok(())
            }
        }
    }
}

/// A back-end serving requests from an in-memory disk through the grants.
struct Backend {
    ring: BackRing<Page, BlkifRequest, BlkifResponse>,
    world: Rc<RefCell<World>>,
    disk: Vec<u8>,
    /// Consumed requests not yet answered.
    queue: Vec<BlkifRequest>,
    ops: Vec<u8>,
}

impl Backend {
    /// Consumes every published request into the queue.
    fn take(&mut self) -> usize {
        let before = self.queue.len();
        while let Some(req) = self.ring.consume_request().unwrap() {
            self.queue.push(req);
        }
        self.queue.len() - before
    }

    /// Performs a request; the asserts check what the front-end built.
    fn execute(&mut self, req: &BlkifRequest) -> BlkifResponse {
        self.ops.push(req.operation);
        let mut status = BLKIF_RSP_OKAY;
        let mut at = req.sector_number as usize * SECTOR;
        for seg in &req.seg[..usize::from(req.nr_segments)] {
            assert!(seg.first_sect <= seg.last_sect && seg.last_sect < 8);
            let mut w = self.world.borrow_mut();
            let g = w.grants.get(&seg.gref).expect("segment names a live grant");
            let (gfn, readonly) = (g.gfn, g.readonly);
            let page = w.frames.get_mut(&gfn).expect("granted frame exists");
            let range =
                usize::from(seg.first_sect) * SECTOR..(usize::from(seg.last_sect) + 1) * SECTOR;
            let len = range.len();
            match req.operation {
                BLKIF_OP_READ if readonly => status = BLKIF_RSP_ERROR,
                BLKIF_OP_READ => page[range].copy_from_slice(&self.disk[at..at + len]),
                BLKIF_OP_WRITE => {
                    assert!(readonly, "write data should be granted read-only");
                    self.disk[at..at + len].copy_from_slice(&page[range]);
                }
                op => panic!("segments on operation {op}"),
            }
            at += len;
        }
        BlkifResponse {
            id: req.id,
            operation: req.operation,
            status,
            ..Default::default()
        }
    }

    fn respond(&mut self, rsp: BlkifResponse) {
        self.ring.push_response(&rsp).unwrap();
        self.ring.push_responses_and_check_notify();
    }

    /// Answers queued request `i` correctly.
    fn answer(&mut self, i: usize) {
        let req = self.queue.remove(i);
        let rsp = self.execute(&req);
        self.respond(rsp);
    }

    /// Takes and answers everything, in order.
    fn serve(&mut self) {
        self.take();
        while !self.queue.is_empty() {
            self.answer(0);
        }
    }
}

struct Sim {
    world: Rc<RefCell<World>>,
    page: Page,
    front: BlkFront<Page, TestGrants>,
    back: Backend,
}

fn sim_with(info: DeviceInfo) -> Sim {
    let page = Page::new();
    let world = Rc::new(RefCell::new(World {
        frames: HashMap::new(),
        grants: HashMap::new(),
        next_ref: 0,
        limit: usize::MAX,
    }));
    let front = BlkFront::new(
        FrontRing::init(page.clone()),
        TestGrants(world.clone()),
        info,
        51712,
    );
    let back = Backend {
        ring: BackRing::new(page.clone()),
        world: world.clone(),
        disk: vec![0; info.sectors as usize * SECTOR],
        queue: Vec::new(),
        ops: Vec::new(),
    };
    let sim = Sim {
        world,
        page,
        front,
        back,
    };
    sim.frames(1, 11, |_, _| 0);
    sim
}

fn sim(sectors: u64) -> Sim {
    sim_with(DeviceInfo {
        sectors,
        info: 0,
        flush_cache: true,
        barrier: false,
    })
}

impl Sim {
    /// Allocates `n` frames from `first`, byte `i` of frame `gfn` = `fill(gfn, i)`.
    fn frames(&self, first: u64, n: u64, fill: impl Fn(u64, usize) -> u8) -> Vec<u64> {
        let mut w = self.world.borrow_mut();
        (first..first + n)
            .inspect(|&gfn| {
                w.frames
                    .insert(gfn, (0..PAGE).map(|i| fill(gfn, i)).collect());
            })
            .collect()
    }
    fn frame(&self, gfn: u64) -> Vec<u8> {
        self.world.borrow().frames[&gfn].clone()
    }
    fn live_grants(&self) -> usize {
        self.world.borrow().grants.len()
    }
    fn one(&mut self, tag: u64) -> u64 {
        self.front.submit_read(0, &[Segment::page(1)], tag).unwrap();
        assert_eq!(self.back.take(), 1);
        self.back.queue[0].id
    }
}

fn tags(done: &[Completion]) -> Vec<u64> {
    done.iter().map(|c| c.tag).collect()
}

#[test]
fn write_then_read_back_over_several_requests() {
    let mut s = sim(512);
    let sectors = 30 * 8 - 3;
    let src = s.frames(1000, 30, |gfn, i| (gfn as usize * 7 + i * 13) as u8);
    let plan = plan_io(5, sectors * 512, &src).unwrap();
    let lens: Vec<usize> = plan.iter().map(|c| c.segments.len()).collect();
    assert_eq!(lens, [11, 11, 8]);
    assert_eq!(plan[1].sector, 5 + 88);
    assert_eq!(plan[2].segments[7].last_sect, 4);
    for (tag, chunk) in plan.iter().enumerate() {
        let notify = s
            .front
            .submit_write(chunk.sector, &chunk.segments, tag as u64)
            .unwrap();
        assert_eq!(notify, tag == 0, "only the first push crosses req_event");
    }
    assert_eq!(s.live_grants(), 30);
    s.back.serve();
    let done = s.front.poll().unwrap();
    assert_eq!(tags(&done), [0, 1, 2]);
    assert!(
        done.iter()
            .all(|c| c.is_ok() && c.operation == BLKIF_OP_WRITE)
    );
    assert_eq!(s.live_grants(), 0);

    let written: Vec<u8> = src
        .iter()
        .flat_map(|&g| s.frame(g))
        .take(sectors as usize * SECTOR)
        .collect();
    assert_eq!(&s.back.disk[5 * SECTOR..][..written.len()], &written[..]);

    let dst = s.frames(2000, 30, |_, _| 0);
    for (tag, chunk) in plan_io(5, sectors * 512, &dst).unwrap().iter().enumerate() {
        s.front
            .submit_read(chunk.sector, &chunk.segments, 10 + tag as u64)
            .unwrap();
    }
    s.back.serve();
    let done = s.front.poll().unwrap();
    assert_eq!(tags(&done), [10, 11, 12]);
    assert!(
        done.iter()
            .all(|c| c.is_ok() && c.operation == BLKIF_OP_READ)
    );
    let read: Vec<u8> = dst
        .iter()
        .flat_map(|&g| s.frame(g))
        .take(written.len())
        .collect();
    assert_eq!(read, written);
    assert_eq!(s.live_grants(), 0);
    assert_eq!(s.front.in_flight(), 0);
}

#[test]
fn out_of_order_completions() {
    let mut s = sim(64);
    for tag in 0..4 {
        s.front
            .submit_read(tag * 8, &[Segment::page(1 + tag)], tag)
            .unwrap();
    }
    assert_eq!(s.back.take(), 4);
    s.back.answer(2); // tag 2
    assert_eq!(tags(&s.front.poll().unwrap()), [2]);
    assert_eq!(s.front.in_flight(), 3);
    s.back.answer(0); // tag 0
    s.back.answer(1); // tag 3
    assert_eq!(tags(&s.front.poll().unwrap()), [0, 3]);
    s.back.answer(0); // tag 1
    assert_eq!(tags(&s.front.poll().unwrap()), [1]);
    assert_eq!((s.front.in_flight(), s.live_grants()), (0, 0));
    assert!(s.front.poll().unwrap().is_empty());
    assert_eq!(s.front.protocol_error_count(), 0);
}

#[test]
fn flush_picks_the_offered_operation() {
    for (flush_cache, barrier, want) in [
        (true, false, Some(BLKIF_OP_FLUSH_DISKCACHE)),
        (true, true, Some(BLKIF_OP_FLUSH_DISKCACHE)),
        (false, true, Some(BLKIF_OP_WRITE_BARRIER)),
        (false, false, None),
    ] {
        let mut s = sim_with(DeviceInfo {
            sectors: 8,
            info: 0,
            flush_cache,
            barrier,
        });
        let Some(op) = want else {
            assert_eq!(s.front.submit_flush(7), Err(Error::NotSupported));
            assert_eq!((s.front.ring().req_prod_pvt(), s.front.in_flight()), (0, 0));
            continue;
        };
        s.front.submit_flush(7).unwrap();
        s.back.take();
        assert_eq!(
            (s.back.queue[0].operation, s.back.queue[0].nr_segments),
            (op, 0)
        );
        s.back.serve();
        let done = s.front.poll().unwrap();
        assert_eq!(
            done,
            [Completion {
                tag: 7,
                operation: op,
                status: BLKIF_RSP_OKAY
            }]
        );
        assert_eq!(s.back.ops, [op]);
    }
}

#[test]
fn full_ring_is_refused_without_side_effects() {
    let mut s = sim(64);
    for tag in 0..32 {
        assert_eq!(s.front.free_slots(), 32 - tag as usize);
        s.front.submit_read(0, &[Segment::page(1)], tag).unwrap();
    }
    assert_eq!(s.front.free_slots(), 0);
    assert_eq!(
        s.front.submit_read(0, &[Segment::page(1)], 99),
        Err(Error::RingFull)
    );
    assert_eq!(s.front.submit_flush(99), Err(Error::RingFull));
    assert_eq!((s.live_grants(), s.front.ring().req_prod_pvt()), (32, 32));
    s.back.serve();
    assert_eq!(tags(&s.front.poll().unwrap()), (0..32).collect::<Vec<_>>());
    assert_eq!((s.front.free_slots(), s.live_grants()), (32, 0));
    // Ids and ring slots are reused.
    for round in 0..3 {
        for tag in 0..20 {
            s.front
                .submit_write(8, &[Segment::page(2)], round * 100 + tag)
                .unwrap();
        }
        s.back.serve();
        assert_eq!(s.front.poll().unwrap().len(), 20);
    }
    assert_eq!(s.live_grants(), 0);
}

#[test]
fn grant_failure_ends_the_grants_already_made() {
    let mut s = sim(64);
    s.world.borrow_mut().limit = 2;
    let segs = [Segment::page(1), Segment::page(2), Segment::page(3)];
    assert_eq!(
        s.front.submit_write(0, &segs, 1),
        Err(Error::Grant(GrantError::Exhausted))
    );
    assert_eq!(
        (s.live_grants(), s.front.in_flight(), s.front.free_slots()),
        (0, 0, 32)
    );
    assert_eq!(s.front.ring().req_prod_pvt(), 0);
    s.front.submit_write(0, &segs[..2], 2).unwrap();
}

#[test]
fn grants_still_mapped_are_retried() {
    let mut s = sim(64);
    s.one(1);
    let gref = s.back.queue[0].seg[0].gref;
    s.world.borrow_mut().grants.get_mut(&gref).unwrap().mapped = true;
    s.back.answer(0);
    assert_eq!(tags(&s.front.poll().unwrap()), [1]);
    assert_eq!(s.front.stuck_grants(), [gref]);
    s.front.poll().unwrap();
    assert_eq!(s.live_grants(), 1);
    s.world.borrow_mut().grants.get_mut(&gref).unwrap().mapped = false;
    s.front.poll().unwrap();
    assert_eq!((s.front.stuck_grants().len(), s.live_grants()), (0, 0));
}

#[test]
fn unknown_and_stale_ids_are_reported_and_ignored() {
    // Never issued: a slot past the table, and a live slot's other generation.
    let forge: [fn(u64) -> u64; 2] = [|id| id | 999, |id| id ^ (5 << 32)];
    for bogus in forge {
        let mut s = sim(64);
        let id = s.one(1);
        s.back.queue.clear();
        s.back.respond(BlkifResponse {
            id: bogus(id),
            operation: BLKIF_OP_READ,
            ..Default::default()
        });
        assert!(s.front.poll().unwrap().is_empty());
        assert_eq!(
            s.front.take_protocol_errors(),
            [ProtocolError::UnknownId(bogus(id))]
        );
        assert_eq!((s.front.in_flight(), s.live_grants()), (1, 1));
    }
    // Stale: the id of a completed request whose slot a new request reuses.
    let mut s = sim(64);
    let old = s.one(1);
    s.back.serve();
    s.front.poll().unwrap();
    let new = s.one(2);
    assert_eq!(old & 0xffff_ffff, new & 0xffff_ffff, "slot reused");
    assert_ne!(old, new);
    s.back.queue[0].id = old;
    s.back.answer(0);
    assert!(s.front.poll().unwrap().is_empty());
    assert_eq!(
        s.front.take_protocol_errors(),
        [ProtocolError::UnknownId(old)]
    );
    assert_eq!((s.front.in_flight(), s.live_grants()), (1, 1));
}

#[test]
fn duplicate_response_is_ignored() {
    let mut s = sim(64);
    s.front.submit_read(0, &[Segment::page(1)], 1).unwrap();
    s.front.submit_read(8, &[Segment::page(2)], 2).unwrap();
    s.back.take();
    let first = s.back.queue[0].id;
    s.back.answer(0);
    s.back.queue[0].id = first; // answer the first again instead of the second
    s.back.answer(0);
    assert_eq!(tags(&s.front.poll().unwrap()), [1]);
    assert_eq!(
        s.front.take_protocol_errors(),
        [ProtocolError::UnknownId(first)]
    );
    assert_eq!((s.front.in_flight(), s.live_grants()), (1, 1));
}

#[test]
fn wrong_operation_is_reported_and_ignored() {
    let mut s = sim(64);
    let id = s.one(1);
    s.back.queue.clear();
    s.back.respond(BlkifResponse {
        id,
        operation: BLKIF_OP_WRITE,
        ..Default::default()
    });
    assert!(s.front.poll().unwrap().is_empty());
    let want = ProtocolError::WrongOperation {
        id,
        expected: BLKIF_OP_READ,
        got: BLKIF_OP_WRITE,
    };
    assert_eq!(s.front.take_protocol_errors(), [want]);
    assert_eq!(s.front.protocol_error_count(), 1);
    assert_eq!((s.front.in_flight(), s.live_grants()), (1, 1));
}

#[test]
fn producer_index_past_the_ring_is_an_error() {
    for rsp_prod in [2, 1000, u32::MAX] {
        let mut s = sim(64);
        s.front.submit_read(0, &[Segment::page(1)], 1).unwrap();
        s.page.store_u32(RSP_PROD, rsp_prod);
        let overrun = Error::Ring(RingError::Overrun);
        assert_eq!(s.front.poll(), Err(overrun));
        assert_eq!(s.front.poll(), Err(overrun));
        assert_eq!(s.front.submit_read(0, &[Segment::page(1)], 2), Err(overrun));
        assert_eq!(s.front.free_slots(), 0);
    }
}

#[test]
fn requests_are_validated() {
    let mut s = sim(64);
    let p = Segment::page(1);
    let bad = |first_sect, last_sect| Segment {
        gfn: 2,
        first_sect,
        last_sect,
    };
    assert_eq!(s.front.submit_read(0, &[], 0), Err(Error::NoSegments));
    assert_eq!(
        s.front.submit_read(0, &[p; 12], 0),
        Err(Error::TooManySegments(12))
    );
    assert_eq!(
        s.front.submit_write(0, &[bad(0, 8)], 0),
        Err(Error::BadSegment(0))
    );
    assert_eq!(
        s.front.submit_read(0, &[p, bad(5, 4)], 0),
        Err(Error::BadSegment(1))
    );
    assert_eq!(s.front.submit_read(57, &[p], 0), Err(Error::BeyondEnd));
    assert_eq!(
        s.front.submit_read(u64::MAX - 3, &[p], 0),
        Err(Error::BeyondEnd)
    );
    assert_eq!(
        s.front.submit_read(u64::MAX, &[bad(7, 7)], 0),
        Err(Error::BeyondEnd)
    );
    assert_eq!((s.live_grants(), s.front.ring().req_prod_pvt()), (0, 0));
    // The last sectors of the disk, and partial pages, are fine.
    s.front.submit_read(56, &[p], 0).unwrap();
    s.front
        .submit_write(60, &[bad(3, 3), bad(4, 6)], 0)
        .unwrap();
    assert_eq!(s.front.submit_read(0, &[p; 11], 0), Err(Error::BeyondEnd)); // 88 > 64
    s.back.serve();
    assert!(s.front.poll().unwrap().iter().all(Completion::is_ok));

    let mut ro = sim_with(DeviceInfo {
        sectors: 64,
        info: VDISK_READONLY,
        ..Default::default()
    });
    assert_eq!(ro.front.submit_write(0, &[p], 0), Err(Error::ReadOnly));
    ro.front.submit_read(0, &[p], 0).unwrap();
}

#[test]
fn plan_io_splits_and_checks() {
    assert_eq!(plan_io(0, 0, &[1]), Err(Error::BadLength));
    assert_eq!(plan_io(0, 100, &[1]), Err(Error::BadLength));
    assert_eq!(plan_io(0, 9 * 512, &[1]), Err(Error::BufferTooSmall));
    let one = plan_io(3, 512, &[9]).unwrap();
    assert_eq!(
        one,
        [IoChunk {
            sector: 3,
            segments: vec![Segment {
                gfn: 9,
                first_sect: 0,
                last_sect: 0
            }]
        }]
    );
    let gfns: Vec<u64> = (0..23).collect();
    let plan = plan_io(0, 22 * 4096, &gfns).unwrap();
    assert_eq!(plan.len(), 2);
    assert_eq!((plan[1].sector, plan[1].segments[0].gfn), (88, 11));
}

/// A back-end directory as a lookup function.
fn dir<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> Option<&'a str> + 'a {
    move |k| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
}

#[test]
fn xenbus_backend_keys() {
    let full = [
        ("sectors", "2097152\n"),
        ("info", "4"),
        ("sector-size", "512\0"),
        ("feature-flush-cache", "1"),
        ("feature-barrier", "0"),
    ];
    let info = parse_backend(dir(&full)).unwrap();
    assert_eq!(
        info,
        DeviceInfo {
            sectors: 2_097_152,
            info: 4,
            flush_cache: true,
            barrier: false
        }
    );
    assert!(info.read_only());
    let base = [("sectors", "8"), ("info", "0"), ("sector-size", "512")];
    let info = parse_backend(dir(&base)).unwrap();
    assert_eq!(
        (info.flush_cache, info.barrier, info.flush_operation()),
        (false, false, None)
    );
    let err = |pairs: &[(&str, &str)]| parse_backend(dir(pairs)).unwrap_err();
    assert_eq!(err(&base[1..]), XenbusError::Missing("sectors"));
    assert_eq!(err(&base[..2]), XenbusError::Missing("sector-size"));
    let mut big = base;
    big[2].1 = "4096";
    assert_eq!(err(&big), XenbusError::UnsupportedSectorSize(4096));
    for (i, bad) in [
        (0, "12x"),
        (0, "-1"),
        (0, "+5"),
        (0, ""),
        (1, "4294967296"),
        (2, "0x200"),
    ] {
        let mut pairs = base;
        pairs[i].1 = bad;
        assert_eq!(err(&pairs), XenbusError::Invalid(base[i].0));
    }
    let flags = [base[0], base[1], base[2], ("feature-barrier", "yes")];
    assert_eq!(err(&flags), XenbusError::Invalid("feature-barrier"));
    // Owned values work too.
    let owned = parse_backend(|k: &str| {
        (k != "info").then(|| String::from(if k == "sectors" { "8" } else { "512" }))
    });
    assert_eq!(owned, Err(XenbusError::Missing("info")));
}

#[test]
fn xenbus_frontend_keys() {
    let got = frontend_entries(8, 17);
    let want = [
        ("ring-ref", "8"),
        ("event-channel", "17"),
        ("protocol", "x86_64-abi"),
    ];
    assert_eq!(got.len(), want.len());
    for ((k, v), (wk, wv)) in got.iter().zip(want) {
        assert_eq!((*k, v.as_str()), (wk, wv));
    }
    assert!(backend_connected(XenbusState::Connected));
    assert!(!backend_connected(XenbusState::InitWait));
}

#[derive(Clone, Debug)]
enum Op {
    Read {
        sector: u64,
        segs: usize,
    },
    Write {
        sector: u64,
        segs: usize,
    },
    Flush,
    /// The back-end takes what is published and answers up to `n` queued
    /// requests, each picked by `pick` modulo the queue length.
    Answer {
        n: usize,
        pick: usize,
    },
    Poll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..160u64, 1..=11usize).prop_map(|(sector, segs)| Op::Read { sector, segs }),
        (0..160u64, 1..=11usize).prop_map(|(sector, segs)| Op::Write { sector, segs }),
        Just(Op::Flush),
        (0..8usize, any::<usize>()).prop_map(|(n, pick)| Op::Answer { n, pick }),
        Just(Op::Poll),
    ]
}

/// Retires completions from the model, each exactly once.
fn settle(done: Vec<Completion>, outstanding: &mut BTreeSet<u64>) -> Result<(), TestCaseError> {
    for c in done {
        prop_assert!(
            outstanding.remove(&c.tag),
            "tag {} completed twice or never issued",
            c.tag
        );
        prop_assert!(c.is_ok());
    }
    Ok(())
}

proptest! {
    #[test]
    fn shadow_table_stays_consistent(ops in prop::collection::vec(op(), 1..200)) {
        let mut s = sim_with(DeviceInfo { sectors: 256, info: 0, flush_cache: false, barrier: true });
        let mut outstanding = BTreeSet::new();
        let mut next_tag = 0u64;
        for op in ops {
            let free = s.front.free_slots();
            let tag = next_tag;
            let segments: Vec<Segment> = (1..=11).map(Segment::page).collect();
            let result = match op {
                Op::Read { sector, segs } => Some(s.front.submit_read(sector, &segments[..segs], tag)),
                Op::Write { sector, segs } => Some(s.front.submit_write(sector, &segments[..segs], tag)),
                Op::Flush => Some(s.front.submit_flush(tag)),
                Op::Answer { n, pick } => {
                    s.back.take();
                    for k in 0..n.min(s.back.queue.len()) {
                        let i = pick.wrapping_add(k * 7) % s.back.queue.len();
                        s.back.answer(i);
                    }
                    None
                }
                Op::Poll => {
                    settle(s.front.poll().unwrap(), &mut outstanding)?;
                    None
                }
            };
            if let Some(result) = result {
                if free == 0 {
                    prop_assert_eq!(result, Err(Error::RingFull));
                } else {
                    prop_assert!(result.is_ok());
                    outstanding.insert(tag);
                    next_tag += 1;
                }
            }
            prop_assert_eq!(s.front.in_flight(), outstanding.len());
            prop_assert_eq!(s.front.free_slots(), 32 - outstanding.len());
            prop_assert_eq!(s.live_grants(), s.front.grants_in_flight());
        }
        s.back.serve();
        settle(s.front.poll().unwrap(), &mut outstanding)?;
        prop_assert!(outstanding.is_empty());
        prop_assert_eq!((s.live_grants(), s.front.in_flight()), (0, 0));
        prop_assert_eq!(s.front.protocol_error_count(), 0);
    }
}
