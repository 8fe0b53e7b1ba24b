//! Host tests: the front-end core against the real back-end core
//! (`echoback`) on an in-memory ring page, and against a hostile back-end
//! that writes responses straight into the page.

use std::collections::BTreeSet;

use echoback::EchoBack;
use guest_abi::io::echo::*;
use guest_abi::io::ring::BackRing;
use guest_abi::io::ring::testing::MemPage;
use guest_abi::io::xenbus::XenbusState;
use proptest::prelude::*;

use super::xenbus::{KEY_FEATURE_UPPERCASE, XenbusError, parse_backend};
use super::*;

const RSP_PROD: usize = 8;

/// The ring page; both ends hold a clone.
type Page = MemPage;

const ALL: Features = Features { uppercase: true };

/// The front-end and the real back-end core on one page.
fn with_echoback(
    front_features: Features,
    back_features: echoback::Features,
) -> (EchoFront<Page>, EchoBack<Page>) {
    let page = Page::new();
    let front = EchoFront::new(FrontRing::init(page.clone()), front_features);
    let back = EchoBack::new(page, back_features);
    (front, back)
}

/// A hand-driven back-end: consumes requests and answers whatever the test
/// says.
struct Hostile {
    ring: BackRing<Page, EchoRequest, EchoResponse>,
    page: Page,
}

fn with_hostile() -> (EchoFront<Page>, Hostile) {
    let page = Page::new();
    let front = EchoFront::new(FrontRing::init(page.clone()), ALL);
    let ring = BackRing::new(page.clone());
    (front, Hostile { ring, page })
}

impl Hostile {
    fn take(&mut self) -> Vec<EchoRequest> {
        let mut v = Vec::new();
        while let Some(r) = self.ring.consume_request().unwrap() {
            v.push(r);
        }
        v
    }
    fn send(&mut self, rsps: &[EchoResponse]) {
        for r in rsps {
            self.ring.push_response(r).unwrap();
        }
        self.ring.push_responses_and_check_notify();
    }
}

/// A correct answer to `req`, numbered `seq`.
fn good(req: &EchoRequest, seq: u32) -> EchoResponse {
    let mut r = echoback::answer(req, &echoback::Features::default());
    r.seq = seq;
    r
}

#[test]
fn talks_to_the_real_back_end() {
    let (mut front, mut back) = with_echoback(ALL, echoback::Features::default());
    assert!(
        front.submit(ECHO_OP_UPPERCASE, b"hello, echo", 10).unwrap(),
        "the back-end's first req_event asks for an event"
    );
    front.submit(ECHO_OP_ECHO, b"As Is", 11).unwrap();
    front.submit(ECHO_OP_ECHO, b"", 12).unwrap();
    assert_eq!(front.in_flight(), 3);
    let w = back.process().unwrap();
    assert!(w.notify);
    let replies = front.poll().unwrap();
    assert_eq!(replies.len(), 3);
    assert_eq!(
        (replies[0].tag, replies[0].seq, replies[0].payload()),
        (10, 1, &b"HELLO, ECHO"[..])
    );
    assert_eq!(
        (replies[1].tag, replies[1].seq, replies[1].payload()),
        (11, 2, &b"As Is"[..])
    );
    assert!(replies[2].is_ok() && replies[2].payload().is_empty());
    assert_eq!(front.in_flight(), 0);
    assert_eq!(front.protocol_error_count(), 0);
}

#[test]
fn keeps_the_ring_full_for_many_rounds() {
    let (mut front, mut back) = with_echoback(ALL, echoback::Features::default());
    let mut next_tag = 0u64;
    let mut answered = 0u64;
    let mut seen = BTreeSet::new();
    while answered < 1000 {
        while front.free_slots() > 0 {
            let text = format!("msg {next_tag}");
            front
                .submit(ECHO_OP_UPPERCASE, text.as_bytes(), next_tag)
                .unwrap();
            next_tag += 1;
        }
        assert_eq!(front.submit(ECHO_OP_ECHO, b"x", 0), Err(Error::RingFull));
        back.process().unwrap();
        for r in front.poll().unwrap() {
            assert!(seen.insert(r.tag), "tag {} completed twice", r.tag);
            assert_eq!(r.payload(), format!("MSG {}", r.tag).as_bytes());
            answered += 1;
        }
    }
    assert_eq!(front.protocol_error_count(), 0);
}

#[test]
fn refuses_bad_submissions_without_touching_the_ring() {
    let (mut front, _back) =
        with_echoback(Features { uppercase: false }, echoback::Features::default());
    let long = [b'a'; ECHO_MAX_PAYLOAD + 1];
    assert_eq!(
        front.submit(ECHO_OP_ECHO, &long, 1),
        Err(Error::TooLong(41))
    );
    assert_eq!(
        front.submit(ECHO_OP_UPPERCASE, b"a", 1),
        Err(Error::NotOffered(ECHO_OP_UPPERCASE))
    );
    assert_eq!(front.submit(9, b"a", 1), Err(Error::UnknownOperation(9)));
    assert_eq!(front.in_flight(), 0);
    assert_eq!(front.ring().req_prod_pvt(), 0);
    assert!(
        front
            .submit(ECHO_OP_ECHO, &long[..ECHO_MAX_PAYLOAD], 1)
            .is_ok()
    );
}

#[test]
fn the_back_end_refusals_come_back_as_statuses() {
    // A raw request the back-end must refuse, and an operation it does not
    // serve: both answered, neither with a payload.
    let (mut front, mut back) = with_echoback(ALL, echoback::Features { uppercase: false });
    let bad_len = EchoRequest {
        len: 200,
        ..EchoRequest::default()
    };
    let mut bad_pad = EchoRequest::new(ECHO_OP_ECHO, b"x").unwrap();
    bad_pad._pad[0] = 1;
    front.submit_raw(bad_len, 1).unwrap();
    front.submit_raw(bad_pad, 2).unwrap();
    front.submit(ECHO_OP_UPPERCASE, b"x", 3).unwrap(); // the front-end was told it is offered
    front.submit(ECHO_OP_ECHO, b"fine", 4).unwrap();
    back.process().unwrap();
    let r = front.poll().unwrap();
    let got: Vec<(u64, i16)> = r.iter().map(|r| (r.tag, r.status)).collect();
    assert_eq!(
        got,
        [
            (1, ECHO_RSP_ERROR),
            (2, ECHO_RSP_ERROR),
            (3, ECHO_RSP_EOPNOTSUPP),
            (4, ECHO_RSP_OKAY)
        ]
    );
    assert!(r[..3].iter().all(|r| r.payload().is_empty()));
    assert_eq!(front.protocol_error_count(), 0);
}

#[test]
fn responses_that_match_nothing_are_ignored() {
    let (mut front, mut be) = with_hostile();
    front.submit(ECHO_OP_ECHO, b"one", 1).unwrap();
    let reqs = be.take();
    let id = reqs[0].id;
    // An id never issued, the right id with another operation, then the
    // real answer, then the same answer again (a replay).
    let never = EchoResponse {
        id: id ^ (1 << 40),
        ..good(&reqs[0], 1)
    };
    let wrong_op = EchoResponse {
        operation: ECHO_OP_UPPERCASE,
        ..good(&reqs[0], 1)
    };
    be.send(&[never]);
    assert!(front.poll().unwrap().is_empty());
    assert_eq!(
        front.take_protocol_errors(),
        [ProtocolError::UnknownId(id ^ (1 << 40))]
    );
    assert_eq!(front.in_flight(), 1);
    // Each hostile answer above used up a consumed request's slot: queue
    // another request so the hostile end has a slot for the next one.
    front.submit(ECHO_OP_ECHO, b"two", 2).unwrap();
    be.take();
    be.send(&[wrong_op]);
    assert!(front.poll().unwrap().is_empty());
    assert_eq!(
        front.take_protocol_errors(),
        [ProtocolError::WrongOperation {
            id,
            expected: ECHO_OP_ECHO,
            got: ECHO_OP_UPPERCASE
        }]
    );
    assert_eq!(
        front.in_flight(),
        2,
        "a mismatched response leaves the request in flight"
    );
    // Still in flight, the first request completes with its real answer.
    front.submit(ECHO_OP_ECHO, b"three", 3).unwrap();
    be.take();
    be.send(&[good(&reqs[0], 1)]);
    let r = front.poll().unwrap();
    assert_eq!((r.len(), r[0].tag, r[0].payload()), (1, 1, &b"one"[..]));
    assert_eq!(front.in_flight(), 2);
}

#[test]
fn a_replayed_response_cannot_complete_a_newer_request() {
    let (mut front, mut be) = with_hostile();
    front.submit(ECHO_OP_ECHO, b"a", 1).unwrap();
    let first = be.take()[0];
    be.send(&[good(&first, 1)]);
    assert_eq!(front.poll().unwrap().len(), 1);
    // The slot is reused by the next request, with a new generation.
    front.submit(ECHO_OP_ECHO, b"b", 2).unwrap();
    let second = be.take()[0];
    assert_eq!(second.id & 0xffff_ffff, first.id & 0xffff_ffff);
    assert_ne!(second.id, first.id);
    be.send(&[good(&first, 2)]);
    assert!(front.poll().unwrap().is_empty());
    assert_eq!(
        front.take_protocol_errors(),
        [ProtocolError::UnknownId(first.id)]
    );
    assert_eq!(front.in_flight(), 1);
}

#[test]
fn a_wrong_length_is_an_error_not_a_payload() {
    let (mut front, mut be) = with_hostile();
    front.submit(ECHO_OP_UPPERCASE, b"abc", 1).unwrap();
    let req = be.take()[0];
    let mut rsp = good(&req, 1);
    rsp.len = ECHO_MAX_PAYLOAD as u8;
    rsp.data = [b'X'; ECHO_MAX_PAYLOAD];
    be.send(&[rsp]);
    let r = front.poll().unwrap();
    assert_eq!(
        (r[0].tag, r[0].status, r[0].payload()),
        (1, ECHO_RSP_ERROR, &b""[..])
    );
    assert_eq!(
        front.take_protocol_errors(),
        [ProtocolError::WrongLength {
            id: req.id,
            expected: 3,
            got: ECHO_MAX_PAYLOAD as u8
        }]
    );
    // A raw request claiming more than the payload area, "answered": the
    // length matches, but cannot be right.
    let raw = EchoRequest {
        len: 41,
        ..EchoRequest::default()
    };
    front.submit_raw(raw, 9).unwrap();
    let req = be.take()[0];
    be.send(&[EchoResponse {
        id: req.id,
        len: 41,
        seq: 2,
        ..EchoResponse::default()
    }]);
    let r = front.poll().unwrap();
    assert_eq!(
        (r[0].tag, r[0].status, r[0].payload()),
        (9, ECHO_RSP_ERROR, &b""[..])
    );
    assert_eq!(
        front.take_protocol_errors(),
        [ProtocolError::WrongLength {
            id: req.id,
            expected: 41,
            got: 41
        }]
    );
    // A length past the payload area on a refusal is ignored too.
    front.submit(ECHO_OP_ECHO, b"abc", 2).unwrap();
    let req = be.take()[0];
    be.send(&[EchoResponse {
        status: ECHO_RSP_ERROR,
        len: 255,
        data: [1; ECHO_MAX_PAYLOAD],
        ..good(&req, 2)
    }]);
    let r = front.poll().unwrap();
    assert!(!r[0].is_ok() && r[0].payload().is_empty());
}

#[test]
fn a_gap_in_the_sequence_is_reported() {
    let (mut front, mut be) = with_hostile();
    for t in 0..3 {
        front.submit(ECHO_OP_ECHO, b"s", t).unwrap();
    }
    let reqs = be.take();
    be.send(&[good(&reqs[0], 1), good(&reqs[1], 3), good(&reqs[2], 4)]);
    let r = front.poll().unwrap();
    assert_eq!(r.len(), 3, "the requests still complete");
    assert_eq!(
        front.take_protocol_errors(),
        [ProtocolError::BadSequence {
            expected: 2,
            got: 3
        }]
    );
}

#[test]
fn a_broken_ring_stays_broken() {
    let (mut front, be) = with_hostile();
    front.submit(ECHO_OP_ECHO, b"x", 1).unwrap();
    // More responses than requests published.
    be.page.store_u32(RSP_PROD, 2);
    assert_eq!(front.poll(), Err(Error::Ring(RingError::Overrun)));
    assert_eq!(front.poll(), Err(Error::Ring(RingError::Overrun)));
    assert_eq!(
        front.submit(ECHO_OP_ECHO, b"x", 2),
        Err(Error::Ring(RingError::Overrun))
    );
    assert_eq!(front.free_slots(), 0);
}

#[test]
fn poll_rearms_the_response_event() {
    let (mut front, mut back) = with_echoback(ALL, echoback::Features::default());
    front.submit(ECHO_OP_ECHO, b"1", 1).unwrap();
    back.process().unwrap();
    front.poll().unwrap();
    // poll ended with the final check: the next response is announced.
    front.submit(ECHO_OP_ECHO, b"2", 2).unwrap();
    assert!(back.process().unwrap().notify);
}

#[test]
fn xenbus_nodes() {
    let read =
        |v: Option<&'static str>| move |k: &str| if k == KEY_FEATURE_UPPERCASE { v } else { None };
    assert_eq!(parse_backend(read(None)), Ok(Features { uppercase: false }));
    assert_eq!(
        parse_backend(read(Some("1"))),
        Ok(Features { uppercase: true })
    );
    assert_eq!(
        parse_backend(read(Some(" 0\0"))),
        Ok(Features { uppercase: false })
    );
    for bad in ["", "yes", "-1", "0x1", "99999999999"] {
        assert_eq!(
            parse_backend(read(Some(bad))),
            Err(XenbusError::Invalid(KEY_FEATURE_UPPERCASE)),
            "{bad:?}"
        );
    }
}

proptest! {
    /// A back-end writing any responses and any producer index: no panic,
    /// every submitted request completes at most once, nothing completes
    /// that was not submitted, and the in-flight count stays consistent.
    #[test]
    fn hostile_responses_never_confuse_the_front_end(
        lens in prop::collection::vec(prop_oneof![0..=ECHO_MAX_PAYLOAD as u8, any::<u8>()], 1..64),
        rsps in prop::collection::vec((any::<u64>(), prop_oneof![Just(ECHO_OP_ECHO), any::<u8>()], prop_oneof![0..=ECHO_MAX_PAYLOAD as u8, any::<u8>()], prop_oneof![Just(ECHO_RSP_OKAY), any::<i16>()], any::<u32>(), any::<bool>()), 0..64),
        prod_skew in prop_oneof![Just(0u32), any::<u32>()],
    ) {
        let (mut front, mut be) = with_hostile();
        let n = lens.len();
        // Raw requests, so their lengths can be anything too.
        for (t, &len) in lens.iter().enumerate() {
            front.submit_raw(EchoRequest { len, ..EchoRequest::default() }, t as u64).unwrap();
        }
        let reqs = be.take();
        let k = rsps.len().min(n);
        for (i, &(id, op, len, status, seq, real_id)) in rsps.iter().take(k).enumerate() {
            let id = if real_id { reqs[i % n].id } else { id };
            be.ring.push_response(&EchoResponse { id, operation: op, len, status, seq, ..EchoResponse::default() }).unwrap();
        }
        be.ring.push_responses();
        if prod_skew != 0 {
            be.page.store_u32(RSP_PROD, (k as u32).wrapping_add(prod_skew));
        }
        let mut completed = BTreeSet::new();
        for _ in 0..2 {
            match front.poll() {
                Ok(replies) => {
                    for r in replies {
                        prop_assert!(r.tag < n as u64);
                        prop_assert!(completed.insert(r.tag));
                        prop_assert!(r.payload().len() <= ECHO_MAX_PAYLOAD);
                        if r.is_ok() {
                            prop_assert_eq!(r.payload().len(), usize::from(lens[r.tag as usize]));
                        } else {
                            prop_assert!(r.payload().is_empty());
                        }
                    }
                }
                Err(Error::Ring(_)) => prop_assert!(prod_skew != 0),
                Err(e) => prop_assert!(false, "{:?}", e),
            }
        }
        prop_assert_eq!(front.in_flight(), n - completed.len());
    }
}

/// The whole device on the host: the real back-end (`echoback::Echo`) in
/// the framework's back-end, this front-end through the framework's
/// handshake, calls, and close, over the loopback store and pages.
#[test]
fn connects_calls_and_closes_against_the_real_back_end() {
    use crate::device::EchoDevice;
    use splitfront::testing::Loopback;
    let lo = Loopback::new(echoback::Echo::default(), 1);
    lo.add("alice", 0, ());
    let mut xs = lo.store();
    let mut echo = EchoDevice::connect_with(&mut xs, lo.kernel()).unwrap();
    assert!(echo.features().uppercase);
    assert_eq!(echo.link().backend_dir, "/local/domain/0/backend/echo/1/0");
    let r = echo.call(ECHO_OP_UPPERCASE, b"loop").unwrap();
    assert_eq!(r.seq, 1);
    assert_eq!(r.payload(), b"LOOP");
    // The whole ring in flight, answered in one go.
    let mut tags = Vec::new();
    while echo.front().free_slots() > 0 {
        tags.push(echo.submit(ECHO_OP_ECHO, b"x").unwrap());
    }
    assert_eq!(tags.len(), 64);
    assert_eq!(echo.wait(&tags).unwrap().len(), 64);
    echo.close(&mut xs).unwrap();
    lo.run_backend();
    lo.with(|w| {
        assert!(w.platform.logged("echoback: alice connected"));
        assert!(
            w.platform
                .logged("alice disconnected: 65 requests (65 answered")
        );
        assert!(w.platform.holds_nothing());
        assert!(w.platform.grants.is_empty(), "the ring grant ended");
        assert_eq!(
            w.store.state("/local/domain/1/device/echo/0"),
            XenbusState::Closed
        );
        assert_eq!(
            w.store.state("/local/domain/0/backend/echo/1/0"),
            XenbusState::Closed
        );
    });
}

/// No device, and a back-end without a usable feature node: errors, with
/// nothing left granted or bound.
#[test]
fn connect_failures_release_everything() {
    use crate::device::{DeviceError, EchoDevice};
    use guest_abi::errno::Errno;
    use splitfront::testing::Loopback;
    let lo = Loopback::new(echoback::Echo::default(), 1);
    let mut xs = lo.store();
    assert!(matches!(
        EchoDevice::connect_with(&mut xs, lo.kernel()),
        Err(DeviceError::Errno(Errno::ENODEV))
    ));
    lo.add("alice", 0, ());
    lo.with(|w| {
        w.store.put(
            "/local/domain/0/backend/echo/1/0",
            &[("feature-uppercase", "yes")],
        );
    });
    assert!(matches!(
        EchoDevice::connect_with(&mut xs, lo.kernel()),
        Err(DeviceError::Negotiation(_))
    ));
    lo.with(|w| {
        assert!(w.platform.grants.is_empty());
        assert!(w.platform.offered.is_empty());
    });
}
