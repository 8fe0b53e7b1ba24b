//! Host tests of the typed ring ends: two simulated peers sharing one page.

use core::cell::{Cell, RefCell};
use std::collections::VecDeque;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::*;
use crate::io::blkif::{BLKIF_RING_SIZE, BlkifRequest, BlkifResponse};
use crate::io::netif::{
    NET_RX_RING_SIZE, NET_TX_RING_SIZE, NetifRxRequest, NetifRxResponse, NetifTxRequest,
    NetifTxResponse,
};
use crate::types::PAGE_SIZE;

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// One page of plain memory both simulated peers share.
struct Mem(RefCell<[u8; PAGE_SIZE]>);

impl Mem {
    fn new() -> Self {
        Self(RefCell::new([0xEE; PAGE_SIZE]))
    }
    fn header(&self) -> SringHeader {
        SringHeader::read_from_prefix(&self.0.borrow()[..])
            .unwrap()
            .0
    }
}

impl SharedPage for Mem {
    fn load_u32(&self, off: usize) -> u32 {
        assert_eq!(off % 4, 0);
        u32::from_ne_bytes(self.0.borrow()[off..off + 4].try_into().unwrap())
    }
    fn store_u32(&self, off: usize, v: u32) {
        assert_eq!(off % 4, 0);
        self.0.borrow_mut()[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.0.borrow()[off..off + out.len()]);
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.0.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }
    fn fence(&self) {}
}

/// A 512-byte entry, so a page holds a ring of only 4 and the tests wrap
/// around and fill the ring often.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Big {
    id: u64,
    fill: [u64; 63],
}

impl Big {
    fn request(id: u64) -> Self {
        Self {
            id,
            fill: [id.wrapping_mul(0x9E37_79B9_7F4A_7C15); 63],
        }
    }
    fn response(id: u64) -> Self {
        Self {
            id,
            fill: [!id; 63],
        }
    }
}

/// Deterministic xorshift64* generator.
struct Rng(Cell<u64>);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(Cell::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1))
    }
    fn below(&self, n: u64) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % n
    }
}

#[test]
fn ring_sizes_match_xen() {
    assert_eq!(ring_size_of::<BlkifRequest, BlkifResponse>(), 32);
    assert_eq!(ring_size_of::<NetifTxRequest, NetifTxResponse>(), 256);
    assert_eq!(ring_size_of::<NetifRxRequest, NetifRxResponse>(), 256);
    assert_eq!(
        ring_size_of::<BlkifRequest, BlkifResponse>(),
        BLKIF_RING_SIZE
    );
    assert_eq!(
        ring_size_of::<NetifTxRequest, NetifTxResponse>(),
        NET_TX_RING_SIZE
    );
    assert_eq!(
        ring_size_of::<NetifRxRequest, NetifRxResponse>(),
        NET_RX_RING_SIZE
    );
    assert_eq!(entry_size_of::<BlkifRequest, BlkifResponse>(), 112);
    assert_eq!(entry_size_of::<NetifTxRequest, NetifTxResponse>(), 12);
    assert_eq!(FrontRing::<&Mem, Big, Big>::SIZE, 4);
    assert_eq!(BackRing::<&Mem, BlkifRequest, BlkifResponse>::SIZE, 32);
}

#[test]
fn entry_size_is_the_c_union_size() {
    // 12 bytes aligned 4 with 8 bytes aligned 8: the union is 16 bytes.
    #[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
    #[repr(C)]
    struct Twelve([u32; 3]);
    assert_eq!(entry_size_of::<Twelve, u64>(), 16);
    assert_eq!(entry_size_of::<u64, Twelve>(), 16);
    assert_eq!(ring_size_of::<Twelve, u64>(), 128);
    assert_eq!(ring_size_of::<Twelve, u32>(), 256);
    assert_eq!(ring_size_of::<[u8; 4033], u8>(), 0);
}

#[test]
fn init_writes_the_io_ring_h_header() {
    let mem = Mem::new();
    let _front = FrontRing::<&Mem, Big, Big>::init(&mem);
    let h = mem.header();
    assert_eq!(
        (h.req_prod, h.req_event, h.rsp_prod, h.rsp_event),
        (0, 1, 0, 1)
    );
    assert_eq!(h.pad, [0; 48]);
    init_shared_ring(&mem, u32::MAX);
    let h = mem.header();
    assert_eq!(
        (h.req_prod, h.req_event, h.rsp_prod, h.rsp_event),
        (u32::MAX, 0, u32::MAX, 0)
    );
}

#[test]
fn blkif_round_trip_fills_and_drains_the_ring() {
    let mem = Mem::new();
    let mut front = FrontRing::<&Mem, BlkifRequest, BlkifResponse>::init(&mem);
    let mut back = BackRing::<&Mem, BlkifRequest, BlkifResponse>::new(&mem);
    assert_eq!(front.free_requests(), 32);
    for i in 0..32u64 {
        let req = BlkifRequest {
            operation: 1,
            nr_segments: 1,
            id: i,
            sector_number: i * 8,
            ..Default::default()
        };
        front.push_request(&req).unwrap();
    }
    assert!(front.is_full());
    assert_eq!(front.push_request(&BlkifRequest::default()), Err(Full));
    // Nothing is visible until published.
    assert_eq!(back.consume_request(), Ok(None));
    assert!(
        front.push_requests_and_check_notify(),
        "req_event starts at 1"
    );
    assert_eq!(back.unconsumed_requests(), Ok(32));
    // A response needs a consumed request.
    assert_eq!(back.push_response(&BlkifResponse::default()), Err(Full));
    for i in 0..32u64 {
        let req = back.consume_request().unwrap().unwrap();
        assert_eq!((req.id, req.sector_number, req.operation), (i, i * 8, 1));
        back.push_response(&BlkifResponse {
            id: i,
            operation: 1,
            status: 0,
            ..Default::default()
        })
        .unwrap();
    }
    assert_eq!(back.consume_request(), Ok(None));
    assert_eq!(back.push_response(&BlkifResponse::default()), Err(Full));
    assert_eq!(front.consume_response(), Ok(None));
    assert!(
        back.push_responses_and_check_notify(),
        "rsp_event starts at 1"
    );
    for i in 0..32u64 {
        let rsp = front.consume_response().unwrap().unwrap();
        assert_eq!((rsp.id, rsp.operation, rsp.status), (i, 1, 0));
    }
    assert_eq!(front.consume_response(), Ok(None));
    assert_eq!(front.free_requests(), 32);
    assert_eq!(mem.header().req_prod, 32);
    assert_eq!(mem.header().rsp_prod, 32);
}

#[test]
fn entries_sit_at_union_sized_slots() {
    let mem = Mem::new();
    let mut front = FrontRing::<&Mem, NetifTxRequest, NetifTxResponse>::init(&mem);
    let mut back = BackRing::<&Mem, NetifTxRequest, NetifTxResponse>::new(&mem);
    let reqs = [
        NetifTxRequest {
            gref: 1,
            offset: 2,
            flags: 3,
            id: 4,
            size: 5,
        },
        NetifTxRequest {
            gref: 6,
            offset: 7,
            flags: 8,
            id: 9,
            size: 10,
        },
    ];
    for r in &reqs {
        front.push_request(r).unwrap();
    }
    front.push_requests();
    assert_eq!(&mem.0.borrow()[64 + 12..64 + 24], reqs[1].as_bytes());
    back.consume_request().unwrap();
    back.consume_request().unwrap();
    back.push_response(&NetifTxResponse { id: 4, status: 0 })
        .unwrap();
    back.push_response(&NetifTxResponse { id: 9, status: -1 })
        .unwrap();
    back.push_responses();
    assert_eq!(
        &mem.0.borrow()[64 + 12..64 + 16],
        NetifTxResponse { id: 9, status: -1 }.as_bytes()
    );
    assert_eq!(front.consume_response().unwrap().unwrap().id, 4);
    assert_eq!(
        front.consume_response().unwrap().unwrap(),
        NetifTxResponse { id: 9, status: -1 }
    );
}

/// Round trips in uneven batches starting just below the u32 wrap, checking
/// every request and response arrives exactly once and in order.
#[test]
fn exactly_once_across_index_wrap() {
    for start in [u32::MAX - 5, u32::MAX, u32::MAX - 2000, 0] {
        let mem = Mem::new();
        init_shared_ring(&mem, start);
        let mut front = FrontRing::<&Mem, Big, Big>::attach(&mem, start);
        let mut back = BackRing::<&Mem, Big, Big>::attach(&mem, start);
        let rng = Rng::new(u64::from(start));
        let (mut sent, mut served, mut got) = (0u64, 0u64, 0u64);
        let mut in_flight = VecDeque::new();
        while got < 3000 {
            for _ in 0..rng.below(5) {
                if front.push_request(&Big::request(sent)).is_ok() {
                    sent += 1;
                }
            }
            front.push_requests();
            for _ in 0..rng.below(5) {
                match back.consume_request().unwrap() {
                    Some(req) => {
                        assert_eq!(req, Big::request(served));
                        served += 1;
                        in_flight.push_back(req.id);
                    }
                    None => break,
                }
            }
            for _ in 0..rng.below(5) {
                let Some(id) = in_flight.pop_front() else {
                    break;
                };
                back.push_response(&Big::response(id)).unwrap();
            }
            back.push_responses();
            while let Some(rsp) = front.consume_response().unwrap() {
                assert_eq!(rsp, Big::response(got));
                got += 1;
            }
            assert!(sent - got <= 4);
        }
        assert!(front.rsp_cons().wrapping_sub(start) >= 3000);
        assert_eq!(back.req_cons(), start.wrapping_add(served as u32));
    }
}

#[test]
fn notification_follows_the_event_index() {
    let mem = Mem::new();
    let mut front = FrontRing::<&Mem, Big, Big>::init(&mem);
    let mut back = BackRing::<&Mem, Big, Big>::new(&mem);
    front.push_request(&Big::request(0)).unwrap();
    assert!(front.push_requests_and_check_notify());
    // The back end is busy (has not re-armed req_event): no event needed.
    front.push_request(&Big::request(1)).unwrap();
    assert!(!front.push_requests_and_check_notify());
    // Publishing nothing new never notifies.
    assert!(!front.push_requests_and_check_notify());
    assert!(back.final_check_for_requests(), "two requests are waiting");
    assert_eq!(mem.header().req_event, 1, "unchanged while work is pending");
    back.consume_request().unwrap().unwrap();
    back.consume_request().unwrap().unwrap();
    // Going to sleep: re-arm, and the next request must notify.
    assert!(!back.final_check_for_requests());
    assert_eq!(mem.header().req_event, 3);
    front.push_request(&Big::request(2)).unwrap();
    front.push_request(&Big::request(3)).unwrap();
    assert!(front.push_requests_and_check_notify());

    // Same on the response side.
    back.consume_request().unwrap().unwrap();
    back.push_response(&Big::response(0)).unwrap();
    assert!(back.push_responses_and_check_notify());
    back.push_response(&Big::response(1)).unwrap();
    assert!(
        !back.push_responses_and_check_notify(),
        "front has not re-armed"
    );
    assert!(front.final_check_for_responses());
    front.consume_response().unwrap().unwrap();
    front.consume_response().unwrap().unwrap();
    assert!(!front.final_check_for_responses());
    assert_eq!(mem.header().rsp_event, 3);
    back.push_response(&Big::response(2)).unwrap();
    assert!(back.push_responses_and_check_notify());
}

#[test]
fn final_check_sees_work_that_raced_in() {
    // A peer publishing between the first look and the re-arm is caught by
    // the re-check; one publishing after the re-arm notifies.
    let mem = Mem::new();
    let mut front = FrontRing::<&Mem, Big, Big>::init(&mem);
    let back = BackRing::<&Mem, Big, Big>::new(&mem);
    assert!(!back.final_check_for_requests());
    front.push_request(&Big::request(0)).unwrap();
    assert!(front.push_requests_and_check_notify());
    assert!(back.final_check_for_requests());
}

// ---------------------------------------------------------------------------
// Randomized interleaving at the granularity of single shared-memory accesses.

#[derive(Clone, Copy)]
enum Side {
    Front,
    Back,
}

/// A page view that, before each access, may let the other peer run one
/// whole step: any access of one peer's operation can be preempted by the
/// other peer.
struct Hooked<'a> {
    world: &'a World<'a>,
    side: Side,
}

impl SharedPage for Hooked<'_> {
    fn load_u32(&self, off: usize) -> u32 {
        self.world.maybe_preempt(self.side);
        self.world.mem.load_u32(off)
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.world.maybe_preempt(self.side);
        self.world.mem.store_u32(off, v);
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        self.world.maybe_preempt(self.side);
        self.world.mem.read_bytes(off, out);
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.world.maybe_preempt(self.side);
        self.world.mem.write_bytes(off, data);
    }
    fn fence(&self) {
        self.world.maybe_preempt(self.side);
    }
}

struct FrontPeer<'a> {
    ring: FrontRing<Hooked<'a>, Big, Big>,
    next_id: u64,
    expect: u64,
    sleeping: bool,
}

struct BackPeer<'a> {
    ring: BackRing<Hooked<'a>, Big, Big>,
    expect: u64,
    in_flight: VecDeque<u64>,
    sleeping: bool,
}

struct World<'a> {
    mem: Mem,
    rng: Rng,
    total: u64,
    preempting: Cell<bool>,
    front: RefCell<Option<FrontPeer<'a>>>,
    back: RefCell<Option<BackPeer<'a>>>,
    /// Event-channel pending bits (an event is never lost once sent).
    front_evt: Cell<bool>,
    back_evt: Cell<bool>,
    publishes: Cell<u64>,
    notifications: Cell<u64>,
}

impl World<'_> {
    fn maybe_preempt(&self, side: Side) {
        if self.preempting.get() || self.rng.below(3) != 0 {
            return;
        }
        self.preempting.set(true);
        match side {
            Side::Front => self.back_step(),
            Side::Back => self.front_step(),
        }
        self.preempting.set(false);
    }

    fn front_step(&self) {
        let mut guard = self.front.borrow_mut();
        let f = guard.as_mut().unwrap();
        if self.front_evt.replace(false) {
            f.sleeping = false;
        }
        if f.sleeping {
            return;
        }
        match self.rng.below(3) {
            0 => {
                let mut pushed = false;
                for _ in 0..=self.rng.below(3) {
                    if f.next_id == self.total
                        || f.ring.push_request(&Big::request(f.next_id)).is_err()
                    {
                        break;
                    }
                    f.next_id += 1;
                    pushed = true;
                }
                if pushed {
                    self.publishes.set(self.publishes.get() + 1);
                    if f.ring.push_requests_and_check_notify() {
                        self.notifications.set(self.notifications.get() + 1);
                        self.back_evt.set(true);
                    }
                }
            }
            1 => {
                while let Some(rsp) = f.ring.consume_response().unwrap() {
                    assert_eq!(rsp, Big::response(f.expect));
                    f.expect += 1;
                }
            }
            _ => {
                // Idle only when there is nothing to send right now.
                let idle = f.next_id == self.total || f.ring.is_full();
                if idle && !f.ring.final_check_for_responses() {
                    f.sleeping = true;
                }
            }
        }
    }

    fn back_step(&self) {
        let mut guard = self.back.borrow_mut();
        let b = guard.as_mut().unwrap();
        if self.back_evt.replace(false) {
            b.sleeping = false;
        }
        if b.sleeping {
            return;
        }
        match self.rng.below(3) {
            0 => {
                for _ in 0..=self.rng.below(3) {
                    let Some(req) = b.ring.consume_request().unwrap() else {
                        break;
                    };
                    assert_eq!(req, Big::request(b.expect));
                    b.expect += 1;
                    b.in_flight.push_back(req.id);
                }
            }
            1 => {
                let mut pushed = false;
                for _ in 0..=self.rng.below(3) {
                    let Some(id) = b.in_flight.pop_front() else {
                        break;
                    };
                    b.ring.push_response(&Big::response(id)).unwrap();
                    pushed = true;
                }
                if pushed {
                    self.publishes.set(self.publishes.get() + 1);
                    if b.ring.push_responses_and_check_notify() {
                        self.notifications.set(self.notifications.get() + 1);
                        self.front_evt.set(true);
                    }
                }
            }
            _ => {
                if b.in_flight.is_empty() && !b.ring.final_check_for_requests() {
                    b.sleeping = true;
                }
            }
        }
    }
}

/// Runs one randomized exchange of `total` requests; panics on a lost wakeup
/// (both peers asleep with no event pending while work is outstanding).
fn interleave(seed: u64, start: u32, total: u64) -> (u64, u64) {
    let world = World {
        mem: Mem::new(),
        rng: Rng::new(seed),
        total,
        preempting: Cell::new(false),
        front: RefCell::new(None),
        back: RefCell::new(None),
        front_evt: Cell::new(false),
        back_evt: Cell::new(false),
        publishes: Cell::new(0),
        notifications: Cell::new(0),
    };
    init_shared_ring(&world.mem, start);
    world.front.replace(Some(FrontPeer {
        ring: FrontRing::attach(
            Hooked {
                world: &world,
                side: Side::Front,
            },
            start,
        ),
        next_id: 0,
        expect: 0,
        sleeping: false,
    }));
    world.back.replace(Some(BackPeer {
        ring: BackRing::attach(
            Hooked {
                world: &world,
                side: Side::Back,
            },
            start,
        ),
        expect: 0,
        in_flight: VecDeque::new(),
        sleeping: false,
    }));
    for _ in 0..1_000_000 {
        let (done, front_asleep, front_sent) = {
            let f = world.front.borrow();
            let f = f.as_ref().unwrap();
            (
                f.expect == total,
                f.sleeping && !world.front_evt.get(),
                f.next_id,
            )
        };
        if done {
            return (world.publishes.get(), world.notifications.get());
        }
        let back_asleep = {
            let b = world.back.borrow();
            let b = b.as_ref().unwrap();
            b.sleeping && !world.back_evt.get()
        };
        assert!(
            !(front_asleep && back_asleep),
            "lost wakeup: seed {seed}, start {start:#x}, sent {front_sent}, header {:?}",
            world.mem.header()
        );
        if world.rng.below(2) == 0 {
            world.front_step();
        } else {
            world.back_step();
        }
    }
    panic!("no progress: seed {seed}");
}

#[test]
fn randomized_interleavings_lose_no_wakeup() {
    let (mut publishes, mut notifications) = (0, 0);
    for seed in 0..300u64 {
        let start = match seed % 3 {
            0 => 0,
            1 => u32::MAX - (seed as u32 % 17),
            _ => 0x8000_0000 - 3,
        };
        let (p, n) = interleave(seed, start, 200);
        publishes += p;
        notifications += n;
    }
    // Notification avoidance does avoid notifications.
    assert!(notifications < publishes, "{notifications} of {publishes}");
}

// ---------------------------------------------------------------------------
// Misbehaving peers.

#[test]
fn back_detects_request_producer_overrun() {
    for start in [0, u32::MAX - 1] {
        let mem = Mem::new();
        init_shared_ring(&mem, start);
        let mut back = BackRing::<&Mem, Big, Big>::attach(&mem, start);
        let at = |n: u32| start.wrapping_add(n);

        // A full ring is legitimate.
        mem.store_u32(REQ_PROD, at(4));
        assert_eq!(back.unconsumed_requests(), Ok(4));
        // One past it, or far past it, is not.
        for bad in [at(5), at(0x8000_0000), at(u32::MAX)] {
            mem.store_u32(REQ_PROD, bad);
            assert_eq!(back.unconsumed_requests(), Err(RingError::Overrun));
            assert_eq!(back.consume_request(), Err(RingError::Overrun));
            assert!(
                back.final_check_for_requests(),
                "overrun must not look idle"
            );
            assert_eq!(back.req_cons(), start, "nothing consumed");
        }

        // Three consumed and not yet answered: the front may have published
        // only one more, even though req_prod - req_cons would still fit.
        mem.store_u32(REQ_PROD, at(3));
        for _ in 0..3 {
            back.consume_request().unwrap().unwrap();
        }
        mem.store_u32(REQ_PROD, at(5));
        assert_eq!(back.consume_request(), Err(RingError::Overrun));
        mem.store_u32(REQ_PROD, at(4));
        assert!(back.consume_request().unwrap().is_some());

        // A producer index moving backwards.
        mem.store_u32(REQ_PROD, at(2));
        assert_eq!(back.consume_request(), Err(RingError::Overrun));
        assert_eq!(back.req_cons(), at(4));
    }
}

#[test]
fn front_detects_response_producer_overrun() {
    let mem = Mem::new();
    let mut front = FrontRing::<&Mem, Big, Big>::init(&mem);
    front.push_request(&Big::request(0)).unwrap();
    front.push_request(&Big::request(1)).unwrap();
    // Pushed but unpublished requests cannot have responses yet.
    for bad in [1, 5, 0x8000_0000, u32::MAX] {
        mem.store_u32(RSP_PROD, bad);
        assert_eq!(front.consume_response(), Err(RingError::Overrun));
        assert!(front.final_check_for_responses());
    }
    front.push_requests();
    // More responses than published requests, or than the ring.
    for bad in [3, 4, 5, 0x8000_0000, u32::MAX] {
        mem.store_u32(RSP_PROD, bad);
        assert_eq!(front.unconsumed_responses(), Err(RingError::Overrun));
        assert_eq!(front.consume_response(), Err(RingError::Overrun));
        assert_eq!(front.rsp_cons(), 0);
    }
    mem.store_u32(RSP_PROD, 2);
    assert!(front.consume_response().unwrap().is_some());
    assert!(front.consume_response().unwrap().is_some());
    assert_eq!(front.consume_response(), Ok(None));
    // Backwards.
    mem.store_u32(RSP_PROD, 1);
    assert_eq!(front.consume_response(), Err(RingError::Overrun));
}

/// A page view for the back end that counts entry reads and, like a hostile
/// front end, scribbles over each slot right after it is read.
struct Tamper<'a> {
    mem: &'a Mem,
    entry_reads: Cell<u32>,
}

impl SharedPage for Tamper<'_> {
    fn load_u32(&self, off: usize) -> u32 {
        self.mem.load_u32(off)
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.mem.store_u32(off, v);
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        self.mem.read_bytes(off, out);
        if off >= SRING_ENTRIES_OFFSET {
            self.entry_reads.set(self.entry_reads.get() + 1);
            self.mem.write_bytes(off, &vec![0xA5; out.len()]);
        }
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.mem.write_bytes(off, data);
    }
    fn fence(&self) {}
}

#[test]
fn requests_are_fetched_once_and_copied_out() {
    let mem = Mem::new();
    let tamper = Tamper {
        mem: &mem,
        entry_reads: Cell::new(0),
    };
    let mut front = FrontRing::<&Mem, BlkifRequest, BlkifResponse>::init(&mem);
    let mut back = BackRing::<&Tamper, BlkifRequest, BlkifResponse>::new(&tamper);
    let mut sent = BlkifRequest {
        operation: 0,
        nr_segments: 2,
        handle: 3,
        id: 77,
        sector_number: 9,
        ..Default::default()
    };
    sent.seg[0].gref = 100;
    sent.seg[0].last_sect = 7;
    sent.seg[1].gref = 101;
    front.push_request(&sent).unwrap();
    front.push_request(&sent).unwrap();
    front.push_requests();

    let got = back.consume_request().unwrap().unwrap();
    assert_eq!(got, sent);
    assert_eq!(tamper.entry_reads.get(), 1, "one fetch per request");
    // The slot now holds garbage (nr_segments 0xA5), but the copy is intact.
    assert_eq!(mem.0.borrow()[64 + 1], 0xA5);
    assert_eq!(usize::from(got.nr_segments), 2);

    // The front rewrites the published slot after the back end copied it.
    let second = back.consume_request().unwrap().unwrap();
    let hostile = BlkifRequest {
        nr_segments: 200,
        id: 1,
        ..Default::default()
    };
    mem.write_bytes(64 + 112, hostile.as_bytes());
    assert_eq!(second, sent);
    assert_eq!(tamper.entry_reads.get(), 2);
    // Index reads never touch entries.
    let _ = back.unconsumed_requests();
    let _ = back.final_check_for_requests();
    assert_eq!(tamper.entry_reads.get(), 2);
}

#[test]
fn event_offsets_match_the_header() {
    let mem = Mem::new();
    init_shared_ring(&mem, 10);
    mem.store_u32(REQ_EVENT, 20);
    mem.store_u32(RSP_EVENT, 30);
    let h = mem.header();
    assert_eq!(
        (h.req_prod, h.req_event, h.rsp_prod, h.rsp_event),
        (10, 20, 10, 30)
    );
}
