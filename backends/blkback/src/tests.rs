//! Host tests: a simulated front-end on an in-memory ring page, an in-memory
//! disk and in-memory grants.

use std::collections::BTreeMap;

use guest_abi::io::blkif::*;
use guest_abi::io::ring::FrontRing;
use guest_abi::io::ring::testing::MemPage;
use guest_abi::{PAGE_SIZE, Port};
use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};

use super::xenbus::*;
use super::*;

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const ENTRY: usize = size_of::<BlkifRequest>();

/// One ring page of plain memory, shared by the simulated ends.
type Page = MemPage;

fn get_u32(mem: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(mem[off..off + 4].try_into().unwrap())
}
fn set_u32(mem: &mut [u8], off: usize, v: u32) {
    mem[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
fn slot_off(idx: u32) -> usize {
    64 + (idx % BLKIF_RING_SIZE) as usize * ENTRY
}
/// A raw front-end writing request `idx` straight into the page.
fn put_req(mem: &mut [u8], idx: u32, r: &BlkifRequest) {
    let o = slot_off(idx);
    mem[o..o + ENTRY].copy_from_slice(r.as_bytes());
}
fn raw_responses(page: &Page, from: u32, to: u32) -> Vec<BlkifResponse> {
    let mem = page.snapshot();
    (from..to)
        .map(|i| {
            BlkifResponse::read_from_prefix(&mem[slot_off(i)..])
                .unwrap()
                .0
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Read(u64, usize),
    Write(u64, usize),
    Flush,
}

/// A disk in memory that logs each operation, optionally with a copy of the
/// ring page at that moment.
struct MemDisk {
    data: Vec<u8>,
    read_only: bool,
    fail: bool,
    log: Vec<Op>,
    watch: Option<Page>,
    seen: Vec<Vec<u8>>,
    hook: Option<Box<dyn FnMut()>>,
}

impl MemDisk {
    fn new(sectors: u64, read_only: bool) -> Self {
        let n = sectors as usize * SECTOR_SIZE;
        Self {
            data: (0..n).map(|i| (i % 251) as u8).collect(),
            read_only,
            fail: false,
            log: Vec::new(),
            watch: None,
            seen: Vec::new(),
            hook: None,
        }
    }
    fn note(&mut self, op: Op) -> Result<(), DiskError> {
        self.log.push(op);
        if let Some(p) = &self.watch {
            self.seen.push(p.snapshot());
        }
        if let Some(h) = &mut self.hook {
            h();
        }
        if self.fail {
            Err(DiskError::Io)
        } else {
            Ok(())
        }
    }
    fn range(&self, sector: u64, len: usize) -> Result<core::ops::Range<usize>, DiskError> {
        let start = usize::try_from(sector)
            .ok()
            .and_then(|s| s.checked_mul(SECTOR_SIZE))
            .ok_or(DiskError::OutOfRange)?;
        let end = start.checked_add(len).ok_or(DiskError::OutOfRange)?;
        assert_eq!(len % SECTOR_SIZE, 0);
        if end > self.data.len() {
            return Err(DiskError::OutOfRange);
        }
        Ok(start..end)
    }
}

impl Disk for MemDisk {
    fn sectors(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.note(Op::Read(sector, buf.len()))?;
        let r = self.range(sector, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DiskError> {
        assert!(!self.read_only, "write reached a read-only disk");
        self.note(Op::Write(sector, data.len()))?;
        let r = self.range(sector, data.len())?;
        self.data[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        self.note(Op::Flush)
    }
}

/// The front-end's granted pages; revoking removes one.
#[derive(Default)]
struct MemGrants(BTreeMap<u32, Vec<u8>>);

impl MemGrants {
    fn grant(&mut self, gref: u32, fill: u8) {
        self.0.insert(gref, vec![fill; PAGE_SIZE]);
    }
    fn page(&self, gref: u32) -> &[u8] {
        &self.0[&gref]
    }
}

impl GrantIo for MemGrants {
    fn read(&mut self, gref: GrantRef, offset: usize, buf: &mut [u8]) -> Result<(), BadGrant> {
        let page = self.0.get(&gref.0).ok_or(BadGrant)?;
        assert!(offset + buf.len() <= PAGE_SIZE);
        buf.copy_from_slice(&page[offset..offset + buf.len()]);
        Ok(())
    }
    fn write(&mut self, gref: GrantRef, offset: usize, data: &[u8]) -> Result<(), BadGrant> {
        let page = self.0.get_mut(&gref.0).ok_or(BadGrant)?;
        assert!(offset + data.len() <= PAGE_SIZE);
        page[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
}

fn seg(gref: u32, first_sect: u8, last_sect: u8) -> BlkifRequestSegment {
    BlkifRequestSegment {
        gref,
        first_sect,
        last_sect,
        _pad: 0,
    }
}

fn req(operation: u8, id: u64, sector_number: u64, segs: &[BlkifRequestSegment]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation,
        nr_segments: segs.len() as u8,
        id,
        sector_number,
        ..Default::default()
    };
    r.seg[..segs.len()].copy_from_slice(segs);
    r
}

struct Bench {
    page: Page,
    front: FrontRing<Page, BlkifRequest, BlkifResponse>,
    back: BlkBack<Page>,
    disk: MemDisk,
    grants: MemGrants,
}

impl Bench {
    fn new(sectors: u64, read_only: bool) -> Self {
        let page = Page::new();
        let front = FrontRing::init(page.clone());
        let disk = MemDisk::new(sectors, read_only);
        let back = BlkBack::new(page.clone(), DeviceInfo::of(&disk));
        Self {
            page,
            front,
            back,
            disk,
            grants: MemGrants::default(),
        }
    }
    fn submit(&mut self, reqs: &[BlkifRequest]) -> bool {
        for r in reqs {
            self.front.push_request(r).unwrap();
        }
        self.front.push_requests_and_check_notify()
    }
    fn run(&mut self) -> Work {
        self.back.process(&mut self.disk, &mut self.grants).unwrap()
    }
    fn replies(&mut self) -> Vec<(u64, u8, i16)> {
        let mut out = Vec::new();
        while let Some(r) = self.front.consume_response().unwrap() {
            out.push((r.id, r.operation, r.status));
        }
        out
    }
    fn exchange(&mut self, reqs: &[BlkifRequest]) -> Vec<(u64, u8, i16)> {
        self.submit(reqs);
        self.run();
        self.replies()
    }
}

const R: u8 = BLKIF_OP_READ;
const W: u8 = BLKIF_OP_WRITE;
const OK: i16 = BLKIF_RSP_OKAY;
const ERR: i16 = BLKIF_RSP_ERROR;
const NOTSUPP: i16 = BLKIF_RSP_EOPNOTSUPP;

#[test]
fn multi_segment_partial_sector_round_trip() {
    let mut b = Bench::new(64, false);
    for (g, fill) in [(10, 0xA1), (11, 0xB2), (12, 0xC3)] {
        b.grants.grant(g, fill);
    }
    // Make every byte of the source pages distinct per position.
    for g in [10u32, 11, 12] {
        let p = b.grants.0.get_mut(&g).unwrap();
        for (i, x) in p.iter_mut().enumerate() {
            *x = (i / 512) as u8 ^ (g as u8) << 4 ^ (i as u8);
        }
    }
    let segs = [seg(10, 2, 7), seg(11, 0, 0), seg(12, 3, 5)];
    assert_eq!(b.exchange(&[req(W, 1, 4, &segs)]), [(1, W, OK)]);
    let mut expected = Vec::new();
    expected.extend_from_slice(&b.grants.page(10)[1024..4096]);
    expected.extend_from_slice(&b.grants.page(11)[0..512]);
    expected.extend_from_slice(&b.grants.page(12)[1536..3072]);
    assert_eq!(&b.disk.data[4 * 512..14 * 512], &expected[..]);
    assert_eq!(b.disk.log, [Op::Write(4, 10 * 512)]);
    // Neighbouring sectors untouched.
    assert_eq!(b.disk.data[4 * 512 - 1], ((4 * 512 - 1) % 251) as u8);
    assert_eq!(b.disk.data[14 * 512], ((14 * 512) % 251) as u8);

    // Read the same 10 sectors back through another layout.
    b.grants.grant(20, 0);
    b.grants.grant(21, 0x55);
    let segs = [seg(20, 0, 7), seg(21, 6, 7)];
    assert_eq!(b.exchange(&[req(R, 2, 4, &segs)]), [(2, R, OK)]);
    assert_eq!(b.grants.page(20), &expected[..4096]);
    assert_eq!(&b.grants.page(21)[3072..], &expected[4096..]);
    assert!(b.grants.page(21)[..3072].iter().all(|&x| x == 0x55));
    // One disk read for the whole request (its segments are consecutive).
    assert_eq!(&b.disk.log[1..], [Op::Read(4, 5120)]);
    let s = *b.back.stats();
    assert_eq!(
        (s.reads, s.writes, s.sectors_read, s.sectors_written),
        (1, 1, 10, 10)
    );
}

#[test]
fn many_in_flight_one_call_and_no_lost_wakeup() {
    let mut b = Bench::new(64, false);
    for g in 1..=4 {
        b.grants.grant(g, g as u8);
    }
    let reqs: Vec<_> = (0..4u32)
        .map(|i| req(W, 100 + u64::from(i), u64::from(i) * 8, &[seg(i + 1, 0, 7)]))
        .chain([req(R, 200, 8, &[seg(1, 0, 7)])])
        .collect();
    assert!(b.submit(&reqs));
    let work = b.run();
    assert_eq!((work.handled, work.notify, work.more), (5, true, false));
    let got = b.replies();
    let ids: Vec<u64> = got.iter().map(|r| r.0).collect();
    assert_eq!(ids, [100, 101, 102, 103, 200]);
    assert!(got.iter().all(|r| r.2 == OK));
    assert_eq!(
        b.grants.page(1),
        &[2u8; PAGE_SIZE][..],
        "read back segment 2's data"
    );
    // The back-end asked to hear of the next request before going idle.
    assert_eq!(b.page.with(|m| get_u32(m, REQ_EVENT)), 6);
    assert!(b.submit(&[req(BLKIF_OP_FLUSH_DISKCACHE, 7, 0, &[])]));
    assert_eq!(b.run().handled, 1);
    assert_eq!(b.replies(), [(7, BLKIF_OP_FLUSH_DISKCACHE, OK)]);
    // Nothing new: no event for the front-end.
    assert_eq!(b.run(), Work::default());
}

#[test]
fn request_racing_the_final_check_is_served() {
    let mut b = Bench::new(16, false);
    b.grants.grant(1, 9);
    let mut once = true;
    b.page.on_store(REQ_EVENT, move |m| {
        if once {
            once = false;
            put_req(m, 1, &req(R, 2, 0, &[seg(1, 0, 0)]));
            set_u32(m, REQ_PROD, 2);
        }
    });
    let mut raw = b.page.snapshot();
    put_req(&mut raw, 0, &req(R, 1, 0, &[seg(1, 0, 0)]));
    set_u32(&mut raw, REQ_PROD, 1);
    b.page.with(|m| m.copy_from_slice(&raw));
    let work = b.back.process(&mut b.disk, &mut b.grants).unwrap();
    assert_eq!(work.handled, 2);
    let ids: Vec<_> = raw_responses(&b.page, 0, 2).iter().map(|r| r.id).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(b.page.with(|m| get_u32(m, RSP_PROD)), 2);
}

#[test]
fn a_front_end_that_never_stops_is_cut_off_by_the_budget() {
    let mut b = Bench::new(16, false);
    b.grants.grant(1, 0);
    let mut next = 0u32;
    b.page.on_store(REQ_EVENT, move |m| {
        put_req(m, next, &req(R, u64::from(next), 0, &[seg(1, 0, 0)]));
        next += 1;
        set_u32(m, REQ_PROD, next);
    });
    let work = b.back.process(&mut b.disk, &mut b.grants).unwrap();
    assert_eq!((work.handled, work.more), (MAX_REQUESTS_PER_CALL, true));
}

#[test]
fn a_front_end_that_never_consumes_responses_holds_no_memory_here() {
    // The front-end publishes a full ring of 11-page reads again and again
    // and never advances rsp_cons: each request is answered in its slot as
    // it is consumed, and the back-end holds one request's buffer at most.
    let mut b = Bench::new(4096, false);
    for g in 0..11 {
        b.grants.grant(g, 0);
    }
    let segs: Vec<_> = (0..11).map(|g| seg(g, 0, 7)).collect();
    let size = b.back.ring().size();
    let mut prod = 0u32;
    for _round in 0..20 {
        let mut raw = b.page.snapshot();
        for _ in 0..size {
            put_req(&mut raw, prod, &req(R, u64::from(prod), 0, &segs));
            prod += 1;
        }
        set_u32(&mut raw, REQ_PROD, prod);
        b.page.with(|m| m.copy_from_slice(&raw));
        while b.back.process(&mut b.disk, &mut b.grants).unwrap().more {}
        assert!(
            b.back.buffer_bytes() <= 11 * 4096,
            "{}",
            b.back.buffer_bytes()
        );
    }
    assert_eq!(b.back.stats().requests, u64::from(20 * size));
    assert_eq!(b.page.with(|m| get_u32(m, RSP_PROD)), prod);
}

#[test]
fn flush_and_barrier_ordering() {
    let mut b = Bench::new(64, false);
    b.grants.grant(1, 1);
    b.disk.watch = Some(b.page.clone());
    let reqs = [
        req(W, 1, 0, &[seg(1, 0, 7)]),
        req(W, 2, 8, &[seg(1, 0, 7)]),
        req(BLKIF_OP_FLUSH_DISKCACHE, 3, 0, &[]),
        req(BLKIF_OP_WRITE_BARRIER, 4, 16, &[seg(1, 0, 3)]),
        req(BLKIF_OP_WRITE_BARRIER, 5, 0, &[]),
    ];
    let replies = b.exchange(&reqs);
    assert_eq!(
        replies,
        [
            (1, W, OK),
            (2, W, OK),
            (3, BLKIF_OP_FLUSH_DISKCACHE, OK),
            (4, BLKIF_OP_WRITE_BARRIER, OK),
            (5, BLKIF_OP_WRITE_BARRIER, OK)
        ]
    );
    assert_eq!(
        b.disk.log,
        [
            Op::Write(0, 4096),
            Op::Write(8, 4096),
            Op::Flush,
            Op::Write(16, 2048),
            Op::Flush,
            Op::Flush
        ]
    );
    // When the disk acted for request k, its ring slot still held the
    // request: the response was written only after the disk returned.
    let owner = [0usize, 1, 2, 3, 3, 4];
    for (snap, &k) in b.disk.seen.iter().zip(&owner) {
        let o = slot_off(k as u32);
        assert_eq!(&snap[o..o + ENTRY], reqs[k].as_bytes(), "slot {k}");
        assert_eq!(get_u32(snap, RSP_PROD), 0);
    }
    assert_eq!(b.back.stats().flushes, 3);
}

#[test]
fn hostile_requests_are_refused_and_service_continues() {
    let mut b = Bench::new(32, false);
    b.grants.grant(1, 0x77);
    let good = seg(1, 0, 7);
    let mut twelve = req(R, 0, 0, &[good; 11]);
    twelve.nr_segments = 12;
    twelve.id = 12;
    let mut max_nr = twelve;
    max_nr.nr_segments = 255;
    max_nr.id = 255;
    let reqs = [
        req(BLKIF_OP_RESERVED_1, 1, 0, &[good]),
        req(BLKIF_OP_DISCARD, 2, 0, &[]),
        req(BLKIF_OP_INDIRECT, 3, 0, &[good]),
        req(200, 4, 0, &[]),
        req(R, 5, 0, &[]),
        req(W, 6, 0, &[]),
        twelve,
        max_nr,
        req(R, 7, 0, &[seg(1, 4, 3)]),
        req(W, 8, 0, &[seg(1, 0, 8)]),
        req(R, 9, 0, &[good, seg(1, 7, 255)]),
        req(R, 10, 31, &[seg(1, 0, 1)]),
        req(W, 11, 32, &[seg(1, 0, 0)]),
        req(R, 13, u64::MAX, &[seg(1, 0, 0)]),
        req(W, 14, u64::MAX - 3, &[good]),
        // Valid ones after all that: the last sector exactly, and a write.
        req(R, 15, 31, &[seg(1, 7, 7)]),
        req(W, 16, 24, &[good]),
    ];
    let got = b.exchange(&reqs);
    let want: Vec<_> = reqs
        .iter()
        .map(|r| {
            let status = match r.id {
                1..=4 => NOTSUPP,
                15 | 16 => OK,
                _ => ERR,
            };
            (r.id, r.operation, status)
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(b.disk.log, [Op::Read(31, 512), Op::Write(24, 4096)]);
    let s = *b.back.stats();
    assert_eq!((s.unsupported, s.invalid, s.requests), (4, 11, 17));
}

#[test]
fn bad_or_revoked_grants_fail_without_side_effects() {
    let mut b = Bench::new(64, false);
    for g in 1..=6 {
        b.grants.grant(g, 0x40 + g as u8);
    }
    let before = b.disk.data.clone();
    // Segment 5 names a grant that was never given.
    let segs: Vec<_> = (1..=6)
        .map(|g| seg(if g == 5 { 99 } else { g }, 0, 7))
        .collect();
    assert_eq!(b.exchange(&[req(W, 1, 0, &segs)]), [(1, W, ERR)]);
    assert_eq!(b.disk.data, before, "nothing written");
    assert!(b.disk.log.is_empty());
    // A grant revoked between requests.
    assert_eq!(b.exchange(&[req(W, 2, 0, &[seg(3, 0, 0)])]), [(2, W, OK)]);
    b.grants.0.remove(&3);
    assert_eq!(b.exchange(&[req(W, 3, 1, &[seg(3, 0, 0)])]), [(3, W, ERR)]);
    assert_eq!(b.exchange(&[req(R, 4, 0, &[seg(3, 0, 0)])]), [(4, R, ERR)]);
    assert_eq!(b.back.stats().grant_errors, 3);
    // Still serving.
    assert_eq!(b.exchange(&[req(R, 5, 0, &[seg(1, 0, 0)])]), [(5, R, OK)]);
}

#[test]
fn disk_errors_are_answered() {
    let mut b = Bench::new(16, false);
    b.grants.grant(1, 0);
    b.disk.fail = true;
    let got = b.exchange(&[
        req(R, 1, 0, &[seg(1, 0, 0)]),
        req(W, 2, 0, &[seg(1, 0, 0)]),
        req(BLKIF_OP_FLUSH_DISKCACHE, 3, 0, &[]),
    ]);
    assert!(got.iter().all(|r| r.2 == ERR));
    assert_eq!(b.back.stats().disk_errors, 3);
    b.disk.fail = false;
    assert_eq!(b.exchange(&[req(R, 4, 0, &[seg(1, 0, 0)])]), [(4, R, OK)]);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut b = Bench::new(16, true);
    b.grants.grant(1, 0);
    let got = b.exchange(&[
        req(W, 1, 0, &[seg(1, 0, 0)]),
        req(BLKIF_OP_WRITE_BARRIER, 2, 0, &[seg(1, 0, 0)]),
        req(R, 3, 0, &[seg(1, 0, 0)]),
        req(BLKIF_OP_FLUSH_DISKCACHE, 4, 0, &[]),
    ]);
    let status: Vec<_> = got.iter().map(|r| r.2).collect();
    assert_eq!(status, [ERR, ERR, OK, OK]);
    assert!(!b.disk.log.iter().any(|op| matches!(op, Op::Write(..))));
}

#[test]
fn request_rewritten_after_publication_is_served_as_consumed() {
    let mut b = Bench::new(16, false);
    b.grants.grant(1, 0);
    b.grants.grant(2, 0x33);
    let evil = req(W, 999, 8, &[seg(2, 0, 7); 11]);
    let page = b.page.clone();
    b.disk.hook = Some(Box::new(move || page.with(|m| put_req(m, 0, &evil))));
    assert!(b.submit(&[req(R, 1, 2, &[seg(1, 0, 1)])]));
    b.run();
    assert_eq!(b.replies(), [(1, R, OK)]);
    assert_eq!(b.disk.log, [Op::Read(2, 1024)]);
    assert_eq!(&b.grants.page(1)[..1024], &b.disk.data[1024..2048]);
    assert!(b.grants.page(2).iter().all(|&x| x == 0x33));
}

#[test]
fn producer_index_past_the_ring_is_fatal() {
    for prod in [33, 1000, u32::MAX] {
        let mut b = Bench::new(16, false);
        b.page.with(|m| set_u32(m, REQ_PROD, prod));
        assert_eq!(
            b.back.process(&mut b.disk, &mut b.grants),
            Err(Fatal::RingOverrun)
        );
        assert!(b.disk.log.is_empty());
    }
    // After some traffic too.
    let mut b = Bench::new(16, false);
    b.grants.grant(1, 0);
    assert_eq!(b.exchange(&[req(R, 1, 0, &[seg(1, 0, 0)])]).len(), 1);
    b.page.with(|m| set_u32(m, REQ_PROD, 1 + 33));
    assert_eq!(
        b.back.process(&mut b.disk, &mut b.grants),
        Err(Fatal::RingOverrun)
    );
}

fn arb_request() -> impl Strategy<Value = BlkifRequest> {
    let raw = prop::collection::vec(any::<u8>(), ENTRY)
        .prop_map(|b| BlkifRequest::read_from_bytes(&b).unwrap());
    let shaped = (
        0u8..8,
        0u8..13,
        any::<u64>(),
        prop_oneof![0u64..40, any::<u64>()],
        prop::collection::vec((0u32..5, 0u8..9, 0u8..9), 11),
    )
        .prop_map(|(op, nr, id, sector, segs)| {
            let mut r = req(op, id, sector, &[]);
            r.nr_segments = nr;
            for (s, (g, f, l)) in r.seg.iter_mut().zip(segs) {
                *s = seg(g, f, l);
            }
            r
        });
    prop_oneof![1 => raw, 3 => shaped]
}

/// Cases for a fuzz property: `default`, or `MICROVISOR_FUZZ_CASES` (set by
/// `cargo xtask fuzz --host`).
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("MICROVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(256)))]

    /// Any requests and any producer index: no panic, an overrun only when the
    /// index is really implausible, and otherwise exactly one response per
    /// request in the ring, in order, carrying that request's id.
    #[test]
    fn random_rings_never_panic(
        read_only in any::<bool>(),
        rounds in prop::collection::vec(
            (prop::collection::vec(arb_request(), 0..=32), prop::option::of(any::<u32>())),
            1..4,
        ),
    ) {
        let mut b = Bench::new(32, read_only);
        for g in 0..4 {
            b.grants.grant(g, g as u8);
        }
        let mut cons = 0u32;
        for (reqs, bogus) in rounds {
            b.page.with(|m| {
                for (i, r) in reqs.iter().enumerate() {
                    put_req(m, cons.wrapping_add(i as u32), r);
                }
                let prod = bogus.unwrap_or(cons.wrapping_add(reqs.len() as u32));
                set_u32(m, REQ_PROD, prod);
            });
            let snap = b.page.snapshot();
            let prod = get_u32(&snap, REQ_PROD);
            let pending = prod.wrapping_sub(cons);
            let result = b.back.process(&mut b.disk, &mut b.grants);
            if pending > BLKIF_RING_SIZE {
                prop_assert_eq!(result, Err(Fatal::RingOverrun));
                break;
            }
            let work = result.unwrap();
            prop_assert_eq!(work.handled, pending);
            prop_assert_eq!(get_u32(&b.page.snapshot(), RSP_PROD), prod);
            let asked: Vec<BlkifRequest> = (cons..cons.wrapping_add(pending))
                .map(|i| BlkifRequest::read_from_prefix(&snap[slot_off(i)..]).unwrap().0)
                .collect();
            let got = raw_responses(&b.page, cons, cons.wrapping_add(pending));
            for (q, r) in asked.iter().zip(&got) {
                prop_assert_eq!((r.id, r.operation), (q.id, q.operation));
                prop_assert!([OK, ERR, NOTSUPP].contains(&r.status));
                prop_assert!(!(read_only && q.operation == W && r.status == OK));
            }
            cons = prod;
        }
    }
}

#[test]
fn backend_nodes_follow_blkif_h() {
    let rw = DeviceInfo {
        sectors: 2048,
        read_only: false,
        physical_sector_size: 4096,
    };
    let nodes = backend_nodes(&rw);
    let get = |nodes: &[(&str, String)], k: &str| {
        nodes
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    };
    for (k, v) in [
        ("sectors", "2048"),
        ("info", "0"),
        ("sector-size", "512"),
        ("physical-sector-size", "4096"),
        ("feature-flush-cache", "1"),
        ("feature-barrier", "1"),
        ("mode", "w"),
    ] {
        assert_eq!(get(&nodes, k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(get(&nodes, "max-ring-page-order"), None);
    let ro = backend_nodes(&DeviceInfo {
        read_only: true,
        ..rw
    });
    assert_eq!(get(&ro, "info"), Some(VDISK_READONLY.to_string()));
    assert_eq!(get(&ro, "mode").as_deref(), Some("r"));
}

#[test]
fn frontend_nodes_are_checked() {
    let parse = |kv: &[(&str, &'static str)]| {
        let kv = kv.to_vec();
        parse_frontend(move |k| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v))
    };
    let ok = FrontendConfig {
        ring_ref: GrantRef(8),
        event_channel: Port(5),
    };
    assert_eq!(parse(&[("ring-ref", "8"), ("event-channel", "5")]), Ok(ok));
    assert_eq!(
        parse(&[
            ("ring-ref", " 8\n"),
            ("event-channel", "5"),
            ("protocol", "x86_64-abi"),
            ("ring-page-order", "0")
        ]),
        Ok(ok)
    );
    assert_eq!(
        parse(&[
            ("ring-ref", "8"),
            ("event-channel", "5"),
            ("protocol", "x86_32-abi")
        ]),
        Err(XenbusError::UnsupportedProtocol("x86_32-abi".to_string()))
    );
    assert_eq!(
        parse(&[
            ("ring-ref", "8"),
            ("event-channel", "5"),
            ("ring-page-order", "2")
        ]),
        Err(XenbusError::UnsupportedRingOrder)
    );
    assert_eq!(
        parse(&[("event-channel", "5")]),
        Err(XenbusError::Missing("ring-ref"))
    );
    assert_eq!(
        parse(&[("ring-ref", "8")]),
        Err(XenbusError::Missing("event-channel"))
    );
    for bad in ["", "abc", "-1", "+3", "4294967296", "0x10", "1 2"] {
        assert_eq!(
            parse(&[("ring-ref", bad), ("event-channel", "5")]),
            Err(XenbusError::Invalid("ring-ref")),
            "{bad:?}"
        );
    }
    assert_eq!(
        parse(&[("ring-ref", "8"), ("event-channel", "0")]),
        Err(XenbusError::Invalid("event-channel"))
    );
    assert_eq!(
        parse(&[("ring-ref", "4294967295"), ("event-channel", "5")]).map(|c| c.ring_ref),
        Ok(GrantRef(u32::MAX))
    );
}

/// A heap with no room for the staging buffer: no request is taken from
/// the ring (nothing answered, nothing allocated); with room, the same
/// requests are served and the buffer has its full size, so serving never
/// asks again.
#[test]
fn no_room_for_the_buffer_leaves_requests_in_the_ring() {
    let mut b = Bench::new(64, false);
    b.grants.grant(10, 0x5A);
    b.submit(&[
        req(W, 1, 0, &[seg(10, 0, 7)]),
        req(R, 2, 0, &[seg(10, 0, 0)]),
    ]);
    let asked = core::cell::Cell::new(0);
    let no = |n: usize| {
        asked.set(n);
        false
    };
    let w = b
        .back
        .process_gated(&mut b.disk, &mut b.grants, &no)
        .unwrap();
    assert!(w.held && w.handled == 0);
    assert_eq!(asked.get(), STAGING_MAX);
    assert!(b.replies().is_empty());
    assert_eq!(b.back.buffer_bytes(), 0, "nothing allocated");
    assert_eq!(
        b.back.ring().unconsumed_requests().unwrap(),
        2,
        "both wait in the ring"
    );
    let w = b
        .back
        .process_gated(&mut b.disk, &mut b.grants, &|_| true)
        .unwrap();
    assert!(!w.held && w.handled == 2);
    assert_eq!(b.replies(), [(1, W, OK), (2, R, OK)]);
    assert_eq!(b.back.buffer_bytes(), STAGING_MAX);
    // Grown once: later requests never ask the heap.
    b.submit(&[req(R, 3, 0, &[seg(10, 0, 7)])]);
    let w = b
        .back
        .process_gated(&mut b.disk, &mut b.grants, &no)
        .unwrap();
    assert!(!w.held && w.handled == 1);
    assert_eq!(b.replies(), [(3, R, OK)]);
}
