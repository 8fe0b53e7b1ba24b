//! Host tests: the back-end against a simulated front-end sharing an
//! in-memory ring page. The well-behaved front-end uses guest-abi's
//! `FrontRing`; the hostile one writes the page directly.

use guest_abi::io::echo::*;
use guest_abi::io::ring::FrontRing;
use guest_abi::io::ring::testing::MemPage;
use proptest::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;
use zerocopy::{FromBytes, IntoBytes};

use super::xenbus::*;
use super::*;

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const ENTRY: usize = ECHO_RING_ENTRY_SIZE;

/// One ring page of plain memory, shared by both simulated ends.
type Page = MemPage;

fn get_u32(mem: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(mem[off..off + 4].try_into().unwrap())
}
fn set_u32(mem: &mut [u8], off: usize, v: u32) {
    mem[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
fn slot_off(idx: u32) -> usize {
    64 + (idx % ECHO_RING_SIZE) as usize * ENTRY
}
/// A raw front-end writing request `idx` straight into the page.
fn put_req(mem: &mut [u8], idx: u32, r: &EchoRequest) {
    let o = slot_off(idx);
    mem[o..o + ENTRY].copy_from_slice(r.as_bytes());
}
/// A raw front-end writing arbitrary bytes as request `idx`.
fn put_raw(mem: &mut [u8], idx: u32, bytes: &[u8; ENTRY]) {
    let o = slot_off(idx);
    mem[o..o + ENTRY].copy_from_slice(bytes);
}
fn raw_response(mem: &[u8], idx: u32) -> EchoResponse {
    EchoResponse::read_from_prefix(&mem[slot_off(idx)..])
        .unwrap()
        .0
}

type Front = FrontRing<Page, EchoRequest, EchoResponse>;

/// A well-behaved front-end and the back-end on one page.
fn pair(features: Features) -> (Front, EchoBack<Page>, Page) {
    let page = Page::new();
    let front = Front::init(page.clone());
    let back = EchoBack::new(page.clone(), features);
    (front, back, page)
}

fn req(id: u64, op: u8, payload: &[u8]) -> EchoRequest {
    EchoRequest {
        id,
        ..EchoRequest::new(op, payload).unwrap()
    }
}

/// Publishes `reqs`, lets the back-end run once, and collects every response.
fn round_trip(
    front: &mut Front,
    back: &mut EchoBack<Page>,
    reqs: &[EchoRequest],
) -> (Work, Vec<EchoResponse>) {
    for r in reqs {
        front.push_request(r).unwrap();
    }
    front.push_requests_and_check_notify();
    let work = back.process().unwrap();
    let mut out = Vec::new();
    while let Some(r) = front.consume_response().unwrap() {
        out.push(r);
    }
    (work, out)
}

#[test]
fn uppercases_echoes_and_numbers_the_responses() {
    let (mut front, mut back, _) = pair(Features::default());
    let (work, rsps) = round_trip(
        &mut front,
        &mut back,
        &[
            req(7, ECHO_OP_UPPERCASE, b"hello, echo!"),
            req(8, ECHO_OP_ECHO, b"MiXed case"),
            req(9, ECHO_OP_UPPERCASE, b""),
        ],
    );
    assert_eq!(work.handled, 3);
    assert!(
        work.notify,
        "the front-end's initial rsp_event asks for the first response"
    );
    assert!(!work.more);
    assert_eq!(rsps.len(), 3);
    assert_eq!(
        (rsps[0].id, rsps[0].status, rsps[0].seq),
        (7, ECHO_RSP_OKAY, 1)
    );
    assert_eq!(rsps[0].payload(), b"HELLO, ECHO!");
    assert_eq!(
        (rsps[1].id, rsps[1].operation, rsps[1].seq),
        (8, ECHO_OP_ECHO, 2)
    );
    assert_eq!(rsps[1].payload(), b"MiXed case");
    assert_eq!(
        (rsps[2].len, rsps[2].status, rsps[2].seq),
        (0, ECHO_RSP_OKAY, 3)
    );
    assert_eq!(
        *back.stats(),
        Stats {
            requests: 3,
            ok: 3,
            invalid: 0,
            unsupported: 0,
            bytes: 22
        }
    );
}

#[test]
fn every_malformed_field_is_refused_and_the_ring_goes_on() {
    let (mut front, mut back, _) = pair(Features::default());
    let too_long = EchoRequest {
        id: 1,
        operation: ECHO_OP_ECHO,
        len: ECHO_MAX_PAYLOAD as u8 + 1,
        ..EchoRequest::default()
    };
    let huge = EchoRequest {
        id: 2,
        len: u8::MAX,
        ..too_long
    };
    let mut reserved = req(3, ECHO_OP_UPPERCASE, b"abc");
    reserved._pad[5] = 1;
    let unknown = EchoRequest {
        id: 4,
        operation: 2,
        ..req(4, ECHO_OP_ECHO, b"abc")
    };
    // An unknown operation is refused as such even when other fields are
    // bad too: the operation decides what they mean.
    let unknown_and_long = EchoRequest {
        id: 5,
        operation: u8::MAX,
        len: u8::MAX,
        _pad: [0xff; 6],
        ..EchoRequest::default()
    };
    let good = req(6, ECHO_OP_UPPERCASE, b"still here");
    let (_, rsps) = round_trip(
        &mut front,
        &mut back,
        &[too_long, huge, reserved, unknown, unknown_and_long, good],
    );
    let status: Vec<(u64, i16, u32)> = rsps.iter().map(|r| (r.id, r.status, r.seq)).collect();
    assert_eq!(
        status,
        [
            (1, ECHO_RSP_ERROR, 1),
            (2, ECHO_RSP_ERROR, 2),
            (3, ECHO_RSP_ERROR, 3),
            (4, ECHO_RSP_EOPNOTSUPP, 4),
            (5, ECHO_RSP_EOPNOTSUPP, 5),
            (6, ECHO_RSP_OKAY, 6),
        ]
    );
    // Refusals carry no payload and keep the request's operation.
    for r in &rsps[..5] {
        assert_eq!((r.len, r.data), (0, [0; ECHO_MAX_PAYLOAD]));
    }
    assert_eq!(rsps[4].operation, u8::MAX);
    assert_eq!(rsps[5].payload(), b"STILL HERE");
    let s = back.stats();
    assert_eq!((s.requests, s.ok, s.invalid, s.unsupported), (6, 1, 3, 2));
}

#[test]
fn an_operation_not_offered_is_refused() {
    let (mut front, mut back, _) = pair(Features { uppercase: false });
    let (_, rsps) = round_trip(
        &mut front,
        &mut back,
        &[req(1, ECHO_OP_UPPERCASE, b"x"), req(2, ECHO_OP_ECHO, b"x")],
    );
    assert_eq!(rsps[0].status, ECHO_RSP_EOPNOTSUPP);
    assert_eq!(
        (rsps[1].status, rsps[1].payload()),
        (ECHO_RSP_OKAY, &b"x"[..])
    );
    assert_eq!(
        backend_nodes(&Features { uppercase: false }),
        [(KEY_FEATURE_UPPERCASE, "0")]
    );
    assert_eq!(
        backend_nodes(&Features::default()),
        [(KEY_FEATURE_UPPERCASE, "1")]
    );
}

#[test]
fn bytes_past_len_are_never_read_or_returned() {
    let mut r = req(1, ECHO_OP_UPPERCASE, b"ab");
    r.data[2..].fill(b'z');
    let rsp = answer(&r, &Features::default());
    assert_eq!(rsp.payload(), b"AB");
    assert!(rsp.data[2..].iter().all(|&b| b == 0));
    // A full payload is fine.
    let full = req(2, ECHO_OP_UPPERCASE, &[b'q'; ECHO_MAX_PAYLOAD]);
    let rsp = answer(&full, &Features::default());
    assert_eq!(rsp.payload(), &[b'Q'; ECHO_MAX_PAYLOAD]);
}

#[test]
fn a_full_ring_is_answered_in_one_call() {
    let (mut front, mut back, _) = pair(Features::default());
    let reqs: Vec<EchoRequest> = (0..u64::from(ECHO_RING_SIZE))
        .map(|i| req(i, ECHO_OP_ECHO, &i.to_le_bytes()))
        .collect();
    for r in &reqs {
        front.push_request(r).unwrap();
    }
    assert!(front.is_full());
    assert!(front.push_request(&reqs[0]).is_err());
    let (work, rsps) = round_trip(&mut front, &mut back, &[]);
    assert_eq!(work.handled, ECHO_RING_SIZE);
    assert!(work.notify);
    for (i, r) in rsps.iter().enumerate() {
        assert_eq!((r.id, r.seq), (i as u64, i as u32 + 1));
        assert_eq!(r.payload(), &(i as u64).to_le_bytes());
    }
    // Nothing new: nothing to do, no event.
    let again = back.process().unwrap();
    assert_eq!(again, Work::default());
}

#[test]
fn notifies_only_when_the_front_end_asked() {
    let (mut front, mut back, _) = pair(Features::default());
    let (w, _) = round_trip(&mut front, &mut back, &[req(1, 0, b"a")]);
    assert!(w.notify);
    // The front-end has not re-armed rsp_event (no final check): no event.
    let (w, rsps) = round_trip(&mut front, &mut back, &[req(2, 0, b"b")]);
    assert!(!w.notify);
    assert_eq!(rsps.len(), 1);
    // Re-armed: the next response is announced.
    assert!(!front.final_check_for_responses());
    let (w, _) = round_trip(&mut front, &mut back, &[req(3, 0, b"c")]);
    assert!(w.notify);
}

#[test]
fn a_request_published_during_the_final_check_is_not_missed() {
    let (mut front, mut back, page) = pair(Features::default());
    let fired = Rc::new(RefCell::new(false));
    let f = fired.clone();
    // The first time the back-end arms req_event, the front-end slips in
    // one more request (index 1) without notifying.
    page.on_store(REQ_EVENT, move |mem| {
        if !*f.borrow() {
            *f.borrow_mut() = true;
            put_req(mem, 1, &req(99, ECHO_OP_UPPERCASE, b"late"));
            set_u32(mem, REQ_PROD, 2);
        }
    });
    front.push_request(&req(1, 0, b"first")).unwrap();
    front.push_requests_and_check_notify();
    let w = back.process().unwrap();
    assert_eq!(w.handled, 2);
    let late = page.with(|mem| raw_response(mem, 1));
    assert_eq!((late.id, late.seq, late.payload()), (99, 2, &b"LATE"[..]));
}

#[test]
fn a_front_end_that_never_stops_gets_bounded_calls() {
    let page = Page::new();
    let mut back = EchoBack::new(page.clone(), Features::default());
    guest_abi::io::ring::init_shared_ring(&page, 0);
    // Every time the back-end arms req_event, the front-end (which saw every
    // response) refills the whole ring.
    let published = Rc::new(RefCell::new(0u32));
    let p = published.clone();
    let fill = move |mem: &mut [u8]| {
        let start = *p.borrow();
        for i in start..start + ECHO_RING_SIZE {
            put_req(mem, i, &req(u64::from(i), ECHO_OP_ECHO, b"x"));
        }
        *p.borrow_mut() = start + ECHO_RING_SIZE;
        set_u32(mem, REQ_PROD, start + ECHO_RING_SIZE);
    };
    page.with(fill.clone());
    page.on_store(REQ_EVENT, fill);
    let w = back.process().unwrap();
    assert_eq!(w.handled, MAX_REQUESTS_PER_CALL);
    assert!(w.more, "stopped at the bound, without the final check");
    // The next call carries on from there.
    let w2 = back.process().unwrap();
    assert_eq!(w2.handled, MAX_REQUESTS_PER_CALL);
    assert_eq!(back.stats().requests, 2 * u64::from(MAX_REQUESTS_PER_CALL));
    let last = page.with(|mem| raw_response(mem, 2 * MAX_REQUESTS_PER_CALL - 1));
    assert_eq!(last.seq, 2 * MAX_REQUESTS_PER_CALL);
}

#[test]
fn broken_indices_are_fatal_and_nothing_is_consumed() {
    for bad_prod in [ECHO_RING_SIZE + 1, u32::MAX, 0x8000_0000] {
        let (_front, mut back, page) = pair(Features::default());
        page.with(|mem| set_u32(mem, REQ_PROD, bad_prod));
        assert_eq!(back.process(), Err(Fatal::RingOverrun));
        assert_eq!(back.ring().req_cons(), 0);
        assert_eq!(back.stats().requests, 0);
        page.with(|mem| assert_eq!(get_u32(mem, RSP_PROD), 0));
    }
    // A producer index that moves backwards after requests were consumed.
    let (mut front, mut back, page) = pair(Features::default());
    round_trip(&mut front, &mut back, &[req(1, 0, b""), req(2, 0, b"")]);
    page.with(|mem| set_u32(mem, REQ_PROD, 1));
    assert_eq!(back.process(), Err(Fatal::RingOverrun));
    // Exactly a full ring ahead is legal.
    let (_front, mut back, page) = pair(Features::default());
    page.with(|mem| set_u32(mem, REQ_PROD, ECHO_RING_SIZE));
    assert_eq!(back.process().unwrap().handled, ECHO_RING_SIZE);
}

#[test]
fn indices_wrap_around() {
    let page = Page::new();
    let start = u32::MAX - 10;
    guest_abi::io::ring::init_shared_ring(&page, start);
    let mut front = Front::attach(page.clone(), start);
    let mut back = EchoBack::attach(page.clone(), start, Features::default());
    let mut seq = 0;
    for round in 0..5u64 {
        let reqs: Vec<EchoRequest> = (0..20)
            .map(|i| req(round * 100 + i, ECHO_OP_UPPERCASE, b"wrap"))
            .collect();
        let (_, rsps) = round_trip(&mut front, &mut back, &reqs);
        assert_eq!(rsps.len(), 20);
        for (r, q) in rsps.iter().zip(&reqs) {
            seq += 1;
            assert_eq!((r.id, r.seq, r.payload()), (q.id, seq, &b"WRAP"[..]));
        }
    }
    assert!(back.ring().req_cons() < start, "the index wrapped");
}

proptest! {
    /// Any 56 bytes as a request: never a panic; the response keeps the id
    /// and operation, carries a known status, and is exactly right when OK.
    #[test]
    fn any_request_gets_a_sound_answer(bytes in prop::array::uniform32(any::<u8>()), tail in prop::array::uniform24(any::<u8>()), upper in any::<bool>()) {
        let mut raw = [0u8; ENTRY];
        raw[..32].copy_from_slice(&bytes);
        raw[32..].copy_from_slice(&tail);
        let r = EchoRequest::read_from_bytes(&raw).unwrap();
        let features = Features { uppercase: upper };
        let rsp = answer(&r, &features);
        prop_assert_eq!(rsp.id, r.id);
        prop_assert_eq!(rsp.operation, r.operation);
        match rsp.status {
            ECHO_RSP_OKAY => {
                prop_assert!(r._pad == [0; 6] && usize::from(r.len) <= ECHO_MAX_PAYLOAD);
                prop_assert_eq!(rsp.len, r.len);
                for (i, &b) in rsp.payload().iter().enumerate() {
                    prop_assert_eq!(Some(b), transform(r.operation, r.data[i]));
                }
                prop_assert!(rsp.data[usize::from(rsp.len)..].iter().all(|&b| b == 0));
            }
            ECHO_RSP_ERROR | ECHO_RSP_EOPNOTSUPP => {
                prop_assert_eq!(rsp.len, 0);
                prop_assert_eq!(rsp.data, [0; ECHO_MAX_PAYLOAD]);
            }
            s => prop_assert!(false, "unknown status {}", s),
        }
    }

    /// A hostile front-end writing garbage entries and any producer index:
    /// the back-end either answers exactly the published requests, in
    /// order with consecutive numbers, or reports the ring broken.
    #[test]
    fn hostile_rings_never_panic(entries in prop::collection::vec(prop::array::uniform32(any::<u8>()), 0..80), prod in prop_oneof![0..=ECHO_RING_SIZE + 2, any::<u32>()]) {
        let (_front, mut back, page) = pair(Features::default());
        page.with(|mem| {
            for (i, e) in entries.iter().enumerate() {
                let mut raw = [0u8; ENTRY];
                raw[..32].copy_from_slice(e);
                raw[32..].copy_from_slice(&e[..24]);
                put_raw(mem, i as u32, &raw);
            }
            set_u32(mem, REQ_PROD, prod);
        });
        match back.process() {
            Ok(w) => {
                prop_assert!(prod <= ECHO_RING_SIZE);
                prop_assert_eq!(w.handled, prod);
                let mem = page.with(|m| m.to_vec());
                prop_assert_eq!(get_u32(&mem, RSP_PROD), prod);
                for i in 0..prod {
                    prop_assert_eq!(raw_response(&mem, i).seq, i + 1);
                }
            }
            Err(Fatal::RingOverrun) => prop_assert!(prod > ECHO_RING_SIZE),
            Err(e) => prop_assert!(false, "{:?}", e),
        }
    }
}

/// The device through the framework, as the service domain runs it:
/// directories, connect, serve, the counters at disconnect.
#[test]
fn serves_through_the_framework() {
    use guest_abi::io::xenbus::XenbusState;
    use splitback::testing::{MemStore, SimPlatform};
    use splitback::{Devices, Slots};
    let mut store = MemStore::default();
    let mut platform = SimPlatform::default();
    let mut slots = Slots::new(64, 4);
    let mut devs = Devices::new(Echo::default(), 0);
    devs.add(&mut store, 3, "carol", 0, ()).unwrap();
    let be = "/local/domain/0/backend/echo/3/0";
    let fe = "/local/domain/3/device/echo/0";
    assert_eq!(
        store.get(&format!("{be}/feature-uppercase")).as_deref(),
        Some("1")
    );
    let page = Page::new();
    let mut front = Front::init(page.clone());
    platform.grants.insert((3, 8), page);
    platform.offered.insert((3, 4));
    store.put(fe, &[("ring-ref", "8"), ("event-channel", "4")]);
    store.put_state(fe, XenbusState::Initialised);
    assert!(devs.step(&mut store, &mut platform, &mut slots));
    assert_eq!(store.state(be), XenbusState::Connected);
    front
        .push_request(&req(1, ECHO_OP_UPPERCASE, b"abc"))
        .unwrap();
    front.push_request(&req(2, 9, b"")).unwrap();
    front.push_requests_and_check_notify();
    devs.serve(&mut platform, &mut slots);
    assert_eq!(platform.notified.len(), 1);
    assert_eq!(front.consume_response().unwrap().unwrap().payload(), b"ABC");
    store.put_state(fe, XenbusState::Closing);
    devs.step(&mut store, &mut platform, &mut slots);
    assert!(platform.logged(
        "echoback: carol disconnected: 2 requests (1 answered, 0 invalid, 1 unsupported), 3 bytes echoed"
    ));
    assert!(platform.holds_nothing());
}
