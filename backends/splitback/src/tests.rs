//! Host tests: the framework over an in-memory store, a simulated platform
//! (grants are a table of plain-memory pages) and a small echo back-end.

use std::collections::BTreeSet;

use guest_abi::io::echo::{ECHO_OP_ECHO, EchoRequest, EchoResponse};
use guest_abi::io::ring::testing::MemPage;
use guest_abi::io::ring::{BackRing, FrontRing};
use proptest::prelude::*;

use super::testing::{MemStore, SimPage, SimPlatform};
use super::*;

type MapStore = MemStore;
type TestPage = SimPage;
type World = SimPlatform;

/// A small echo back-end: one ring (or `rings` rings, served in turn),
/// answers with the payload; a request with operation 0xFF is "fatal".
struct Echo {
    rings: &'static [&'static str],
    refuse_protocol: bool,
}

type Ring<P> = BackRing<P, EchoRequest, EchoResponse>;

impl<P: SharedPage> Backend<P> for Echo {
    type Device = u32;
    type Conn = (Vec<Ring<P>>, u64);
    fn device_type(&self) -> &'static str {
        "echo"
    }
    fn log_name(&self) -> &'static str {
        "echoback"
    }
    fn ring_keys(&self) -> &'static [&'static str] {
        self.rings
    }
    fn frontend_keys(&self) -> &'static [&'static str] {
        &["protocol"]
    }
    fn frontend_nodes(&self, dev: &u32) -> Vec<(&'static str, String)> {
        vec![("colour", format!("{dev}"))]
    }
    fn backend_nodes(&self, _dev: &u32) -> Vec<(&'static str, String)> {
        vec![("feature-uppercase", "0".into())]
    }
    fn accept(&mut self, _dev: &u32, front: &Frontend<'_>) -> Result<(), String> {
        match front.get("protocol") {
            Some(p) if self.refuse_protocol => Err(format!("unsupported ring protocol `{p}`")),
            _ => Ok(()),
        }
    }
    fn connect(
        &mut self,
        _dev: &mut u32,
        _front: &Frontend<'_>,
        rings: Vec<P>,
    ) -> Result<Self::Conn, String> {
        assert_eq!(rings.len(), self.rings.len());
        Ok((rings.into_iter().map(Ring::new).collect(), 0))
    }
    fn serve(&mut self, dev: &mut u32, conn: &mut Self::Conn) -> Result<Work, &'static str> {
        let mut w = Work::default();
        for ring in &mut conn.0 {
            while let Some(req) = ring
                .consume_request()
                .map_err(|_| "peer's producer index ran past the ring")?
            {
                if req.operation == 0xFF {
                    return Err("poisoned");
                }
                let rsp = EchoResponse {
                    id: req.id,
                    operation: req.operation,
                    len: req.len,
                    data: req.data,
                    ..EchoResponse::default()
                };
                ring.push_response(&rsp).map_err(|_| "full")?;
                conn.1 += 1;
                *dev += 1;
            }
            w.notify |= ring.push_responses_and_check_notify();
        }
        Ok(w)
    }
    fn connected_note(&self, dev: &u32) -> String {
        format!(" (device {dev})")
    }
    fn disconnected(&mut self, _dev: &mut u32, conn: Self::Conn) -> String {
        format!("{} requests", conn.1)
    }
}

const FE: &str = "/local/domain/1/device/echo/0";
const BE: &str = "/local/domain/0/backend/echo/1/0";

struct Bench {
    store: MapStore,
    world: World,
    slots: Slots,
    devs: Devices<Echo, TestPage>,
}

fn bench_with(rings: &'static [&'static str], slots: usize) -> Bench {
    let mut b = Bench {
        store: MapStore::default(),
        world: World::default(),
        slots: Slots::new(64, slots),
        devs: Devices::new(
            Echo {
                rings,
                refuse_protocol: false,
            },
            0,
        ),
    };
    b.devs.add(&mut b.store, 1, "alice", 0, 7).unwrap();
    b
}

fn bench() -> Bench {
    bench_with(&[KEY_RING_REF], 8)
}

impl Bench {
    fn step(&mut self) -> bool {
        self.devs
            .step(&mut self.store, &mut self.world, &mut self.slots)
    }
    fn serve(&mut self) -> bool {
        self.devs.serve(&mut self.world, &mut self.slots)
    }
    /// Front-end `dom` shares a ring page as grant `gref` and offers port
    /// `port`, as a well-behaved front-end does; returns its ring.
    fn share(
        &mut self,
        dom: u16,
        gref: u32,
        port: u32,
    ) -> FrontRing<MemPage, EchoRequest, EchoResponse> {
        let page = MemPage::new();
        let ring = FrontRing::init(page.clone());
        self.world.grants.insert((dom, gref), page);
        self.world.offered.insert((dom, port));
        ring
    }
    fn nothing_held(&self) -> bool {
        self.world.holds_nothing() && self.slots.available() == self.slots.capacity()
    }
}

#[test]
fn the_toolstack_part_writes_both_directories_with_their_permissions() {
    let b = bench();
    let s = &b.store;
    assert_eq!(s.get(&format!("{FE}/backend")).unwrap(), BE);
    assert_eq!(s.get(&format!("{FE}/backend-id")).unwrap(), "0");
    assert_eq!(s.get(&format!("{FE}/colour")).unwrap(), "7");
    assert_eq!(s.state(FE), XenbusState::Initialising);
    assert_eq!(s.get(&format!("{BE}/frontend")).unwrap(), FE);
    assert_eq!(s.get(&format!("{BE}/frontend-id")).unwrap(), "1");
    assert_eq!(s.get(&format!("{BE}/feature-uppercase")).unwrap(), "0");
    assert_eq!(s.state(BE), XenbusState::InitWait);
    for n in ["", "/backend", "/backend-id", "/state", "/colour"] {
        assert_eq!(s.perms[&format!("{FE}{n}")], b"n1\0r0\0", "{n}");
    }
    for d in ["/local/domain/1/device", "/local/domain/1/device/echo"] {
        assert_eq!(s.perms[d], b"n1\0r0\0");
    }
    for n in [
        "",
        "/frontend",
        "/frontend-id",
        "/state",
        "/feature-uppercase",
    ] {
        assert_eq!(s.perms[&format!("{BE}{n}")], b"n0\0r1\0", "{n}");
    }
    assert_eq!(b.devs.devices()[0].phase(), Phase::Waiting);
}

#[test]
fn a_store_failure_while_adding_adds_no_device() {
    let mut store = MapStore {
        refuse: Some("/local/domain/0/backend".into()),
        ..MapStore::default()
    };
    let mut devs: Devices<Echo, TestPage> = Devices::new(
        Echo {
            rings: &[KEY_RING_REF],
            refuse_protocol: false,
        },
        0,
    );
    assert_eq!(devs.add(&mut store, 1, "a", 0, 0), Err(Errno::ENOSPC));
    assert!(devs.devices().is_empty());
}

#[test]
fn connects_serves_closes_and_reopens() {
    let mut b = bench();
    assert!(!b.step(), "nothing to do before the front-end moves");
    let mut ring = b.share(1, 9, 5);
    b.store
        .put(FE, &[("ring-ref", "9"), ("event-channel", "5")]);
    b.store.put_state(FE, XenbusState::Initialised);
    assert!(b.step());
    assert_eq!(b.store.state(BE), XenbusState::Connected);
    assert!(b.world.logged("echoback: alice connected (device 7)"));
    assert_eq!(b.devs.devices()[0].phase(), Phase::Connected);
    assert_eq!(b.world.live.get(), 1);
    assert_eq!(b.slots.available(), 7);
    // Its Connected changes nothing.
    b.store.put_state(FE, XenbusState::Connected);
    assert!(!b.step());

    ring.push_request(&EchoRequest::new(ECHO_OP_ECHO, b"hi").unwrap())
        .unwrap();
    ring.push_requests_and_check_notify();
    assert!(!b.serve());
    let port = b.devs.devices()[0].port().unwrap();
    assert_eq!(b.world.notified, [port]);
    assert_eq!(ring.consume_response().unwrap().unwrap().payload(), b"hi");
    assert_eq!(b.devs.devices()[0].data, 8);

    b.store.put_state(FE, XenbusState::Closing);
    assert!(b.step());
    assert_eq!(b.store.state(BE), XenbusState::Closing);
    assert!(b.world.logged("echoback: alice disconnected: 1 requests"));
    assert!(b.nothing_held());
    b.store.put_state(FE, XenbusState::Closed);
    assert!(b.step());
    assert_eq!(b.store.state(BE), XenbusState::Closed);
    assert_eq!(b.devs.devices()[0].phase(), Phase::Closed);
    assert!(!b.step());

    // It starts again: a new connection on new grants.
    b.store.put_state(FE, XenbusState::Initialising);
    assert!(b.step());
    assert_eq!(b.store.state(BE), XenbusState::InitWait);
    assert!(b.world.logged("alice: front-end starts again"));
    let _ring = b.share(1, 10, 6);
    b.store
        .put(FE, &[("ring-ref", "10"), ("event-channel", "6")]);
    b.store.put_state(FE, XenbusState::Initialised);
    assert!(b.step());
    assert_eq!(b.store.state(BE), XenbusState::Connected);
    assert_eq!(b.world.live.get(), 1);
}

#[test]
fn a_vanished_state_node_closes_the_device() {
    let mut b = bench();
    let _ring = b.share(1, 9, 5);
    b.store
        .put(FE, &[("ring-ref", "9"), ("event-channel", "5")]);
    b.store.put_state(FE, XenbusState::Connected);
    assert!(b.step());
    b.store.nodes.remove(&format!("{FE}/state"));
    assert!(b.step());
    assert_eq!(b.store.state(BE), XenbusState::Closed);
    assert!(b.nothing_held());
    b.store.put(FE, &[("state", "garbage")]);
    assert!(!b.step());
}

#[test]
fn bad_front_end_nodes_close_the_device_with_nothing_held() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("event-channel", "5")], "`ring-ref` is missing"),
        (&[("ring-ref", "9")], "`event-channel` is missing"),
        (
            &[("ring-ref", "-9"), ("event-channel", "5")],
            "`ring-ref` has",
        ),
        (
            &[("ring-ref", "0x9"), ("event-channel", "5")],
            "`ring-ref` has",
        ),
        (
            &[("ring-ref", "4294967296"), ("event-channel", "5")],
            "`ring-ref` has",
        ),
        (
            &[("ring-ref", "9"), ("event-channel", "0")],
            "`event-channel` has",
        ),
        (
            &[("ring-ref", "9"), ("event-channel", "")],
            "`event-channel` has",
        ),
        // Syntactically fine, but not a grant of this domain / not offered.
        (&[("ring-ref", "8"), ("event-channel", "5")], "ring grant 8"),
        (
            &[("ring-ref", "9"), ("event-channel", "6")],
            "event channel 6",
        ),
    ];
    for (nodes, why) in cases {
        let mut b = bench();
        let _ring = b.share(1, 9, 5);
        b.store.put(FE, nodes);
        b.store.put_state(FE, XenbusState::Initialised);
        assert!(b.step());
        assert!(b.world.logged(why), "{nodes:?}: {:?}", b.world.log);
        assert!(b.world.logged("alice: cannot connect"));
        assert_eq!(b.store.state(BE), XenbusState::Closed);
        assert!(b.nothing_held(), "{nodes:?}");
        assert_eq!(b.devs.devices()[0].phase(), Phase::Finished);
        // A device that could not connect is not taken back.
        b.store.put_state(FE, XenbusState::Initialising);
        assert!(!b.step());
    }
}

#[test]
fn whitespace_and_a_trailing_nul_are_tolerated() {
    let mut b = bench();
    let _ring = b.share(1, 9, 5);
    b.store
        .put(FE, &[("ring-ref", " 9\n"), ("event-channel", "5\0")]);
    b.store.put_state(FE, XenbusState::Initialised);
    assert!(b.step());
    assert_eq!(b.store.state(BE), XenbusState::Connected);
}

#[test]
fn a_refused_protocol_maps_nothing() {
    let mut b = bench();
    b.devs.backend_mut().refuse_protocol = true;
    let _ring = b.share(1, 9, 5);
    b.store.put(
        FE,
        &[
            ("ring-ref", "9"),
            ("event-channel", "5"),
            ("protocol", "x86_32-abi"),
        ],
    );
    b.store.put_state(FE, XenbusState::Initialised);
    assert!(b.step());
    assert!(b.world.logged("unsupported ring protocol `x86_32-abi`"));
    assert!(b.world.slots_used.is_empty());
    assert!(b.nothing_held());
}

#[test]
fn grant_mapping_slots_are_bounded_and_given_back() {
    let mut b = bench_with(&[KEY_RING_REF], 1);
    b.devs.add(&mut b.store, 2, "bob", 0, 0).unwrap();
    let fe2 = "/local/domain/2/device/echo/0";
    let _r1 = b.share(1, 9, 5);
    let _r2 = b.share(2, 9, 5);
    b.store
        .put(FE, &[("ring-ref", "9"), ("event-channel", "5")]);
    b.store
        .put(fe2, &[("ring-ref", "9"), ("event-channel", "5")]);
    b.store.put_state(FE, XenbusState::Initialised);
    assert!(b.step());
    b.store.put_state(fe2, XenbusState::Initialised);
    assert!(b.step());
    assert!(
        b.world
            .logged("bob: cannot connect: no grant-mapping slot free for 1 ring page(s) (0 free)")
    );
    assert_eq!(
        b.store.state("/local/domain/0/backend/echo/2/0"),
        XenbusState::Closed
    );
    assert_eq!(b.world.live.get(), 1);
    assert_eq!(b.world.slots_used, [64]);
    b.store.put_state(FE, XenbusState::Closing);
    assert!(b.step());
    assert_eq!(b.slots.available(), 1);
}

#[test]
fn slots_pool_arithmetic() {
    let mut s = Slots::new(64, 3);
    let a = s.take(2).unwrap();
    assert_eq!(a.len(), 2);
    assert!(s.take(2).is_none(), "all or nothing");
    assert_eq!(s.available(), 1);
    // Slots it never handed out, and doubles, are ignored.
    s.give(vec![999, a[0], a[0]]);
    assert_eq!(s.available(), 2);
    s.give(vec![a[1]]);
    assert_eq!(s.available(), 3);
    s.give(vec![64]);
    assert_eq!(s.available(), 3);
    let all = s.take(3).unwrap();
    let set: BTreeSet<u64> = all.into_iter().collect();
    assert_eq!(set, BTreeSet::from([64, 65, 66]));
    assert_eq!(s.take(0), Some(vec![]));
}

#[test]
fn two_rings_are_mapped_in_their_keys_order() {
    let mut b = bench_with(&["tx-ring-ref", "rx-ring-ref"], 8);
    let mut tx = b.share(1, 20, 5);
    let rx_page = MemPage::new();
    let mut rx = FrontRing::<_, EchoRequest, EchoResponse>::init(rx_page.clone());
    b.world.grants.insert((1, 21), rx_page);
    b.store.put(
        FE,
        &[
            ("tx-ring-ref", "20"),
            ("rx-ring-ref", "21"),
            ("event-channel", "5"),
        ],
    );
    b.store.put_state(FE, XenbusState::Initialised);
    assert!(b.step());
    assert_eq!(b.world.live.get(), 2);
    assert_eq!(b.slots.available(), 6);
    for (ring, text) in [(&mut tx, b"tx"), (&mut rx, b"rx")] {
        ring.push_request(&EchoRequest::new(ECHO_OP_ECHO, text).unwrap())
            .unwrap();
        ring.push_requests_and_check_notify();
    }
    b.serve();
    assert_eq!(tx.consume_response().unwrap().unwrap().payload(), b"tx");
    assert_eq!(rx.consume_response().unwrap().unwrap().payload(), b"rx");
    // A missing second ring fails the whole connection.
    let mut b = bench_with(&["tx-ring-ref", "rx-ring-ref"], 8);
    let _tx = b.share(1, 20, 5);
    b.store
        .put(FE, &[("tx-ring-ref", "20"), ("event-channel", "5")]);
    b.store.put_state(FE, XenbusState::Initialised);
    b.step();
    assert!(b.world.logged("`rx-ring-ref` is missing"));
    assert!(b.nothing_held());
    // A second ring that is not a grant: the first is unmapped again.
    let mut b = bench_with(&["tx-ring-ref", "rx-ring-ref"], 8);
    let _tx = b.share(1, 20, 5);
    b.store.put(
        FE,
        &[
            ("tx-ring-ref", "20"),
            ("rx-ring-ref", "77"),
            ("event-channel", "5"),
        ],
    );
    b.store.put_state(FE, XenbusState::Initialised);
    b.step();
    assert!(b.world.logged("ring grant 77"));
    assert_eq!(b.world.slots_used.len(), 1);
    assert!(b.nothing_held());
}

#[test]
fn a_broken_ring_disconnects_that_front_end_for_good() {
    let mut b = bench();
    let mut ring = b.share(1, 9, 5);
    b.store
        .put(FE, &[("ring-ref", "9"), ("event-channel", "5")]);
    b.store.put_state(FE, XenbusState::Initialised);
    b.step();
    let mut poison = EchoRequest::new(ECHO_OP_ECHO, b"x").unwrap();
    poison.operation = 0xFF;
    ring.push_request(&poison).unwrap();
    ring.push_requests_and_check_notify();
    assert!(!b.serve());
    assert!(
        b.world
            .logged("echoback: alice: poisoned; disconnecting this front-end")
    );
    assert!(b.nothing_held());
    assert!(b.devs.wants_step());
    assert!(b.step(), "announces Closing without a store change");
    assert_eq!(b.store.state(BE), XenbusState::Closing);
    assert!(!b.devs.wants_step());
    // It is followed to Closed and never connected again.
    b.store.put_state(FE, XenbusState::Closed);
    assert!(b.step());
    assert_eq!(b.store.state(BE), XenbusState::Closed);
    b.store.put_state(FE, XenbusState::Initialising);
    assert!(!b.step());
    assert_eq!(b.devs.devices()[0].phase(), Phase::Finished);
    // An overrun producer index is fatal too.
    let mut b = bench();
    let page = MemPage::new();
    FrontRing::<_, EchoRequest, EchoResponse>::init(page.clone());
    b.world.grants.insert((1, 9), page.clone());
    b.world.offered.insert((1, 5));
    b.store
        .put(FE, &[("ring-ref", "9"), ("event-channel", "5")]);
    b.store.put_state(FE, XenbusState::Initialised);
    b.step();
    page.set_u32(0, 1000);
    b.serve();
    assert!(b.world.logged("ran past the ring; disconnecting"));
    assert!(b.nothing_held());
}

#[test]
fn a_dead_domain_is_let_go_and_never_stepped_again() {
    let mut b = bench();
    let _ring = b.share(1, 9, 5);
    b.store
        .put(FE, &[("ring-ref", "9"), ("event-channel", "5")]);
    b.store.put_state(FE, XenbusState::Connected);
    b.step();
    b.devs.domain_died(2, &mut b.world, &mut b.slots);
    assert_eq!(
        b.world.live.get(),
        1,
        "another domain's death changes nothing"
    );
    b.devs.domain_died(1, &mut b.world, &mut b.slots);
    assert!(b.nothing_held());
    assert!(!b.step());
    assert!(!b.serve());
    b.store.put_state(FE, XenbusState::Initialising);
    assert!(!b.step());
}

#[test]
fn follows_every_front_end_state() {
    use XenbusState as S;
    for (front, step) in [
        (S::Unknown, Step::Disconnect(S::Closed)),
        (S::Initialising, Step::Wait),
        (S::InitWait, Step::Wait),
        (S::Initialised, Step::Connect),
        (S::Connected, Step::Connect),
        (S::Closing, Step::Disconnect(S::Closing)),
        (S::Closed, Step::Disconnect(S::Closed)),
        (S::Reconfiguring, Step::Wait),
        (S::Reconfigured, Step::Wait),
    ] {
        assert_eq!(on_frontend_state(front), step, "{front:?}");
        assert_eq!(reopens(front), front == S::Initialising);
    }
}

#[test]
fn numbers_are_parsed_strictly() {
    assert_eq!(parse_u32("8"), Some(8));
    assert_eq!(parse_u32(" 8\0"), Some(8));
    assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
    for bad in ["", " ", "+8", "-8", "0x8", "8a", "4294967296", "８"] {
        assert_eq!(parse_u32(bad), None, "{bad:?}");
    }
}

proptest! {
    /// Whatever a front-end writes in its nodes and state, the back-end
    /// never panics, and either connects with exactly the grant and port
    /// offered or holds nothing.
    #[test]
    fn any_front_end_nodes_leave_a_consistent_back_end(
        ring_ref in "[0-9a-z \\x00-]{0,12}",
        port in "[0-9a-z \\x00-]{0,12}",
        states in proptest::collection::vec(0u32..10, 1..8),
    ) {
        let mut b = bench();
        let _ring = b.share(1, 9, 5);
        b.store.put(FE, &[("ring-ref", ring_ref.as_str()), ("event-channel", port.as_str())]);
        for s in states {
            b.store.put(FE, &[("state", format!("{s}").as_str())]);
            b.step();
            b.serve();
            let d = &b.devs.devices()[0];
            if d.phase() == Phase::Connected {
                prop_assert_eq!(parse_u32(&ring_ref), Some(9));
                prop_assert_eq!(parse_u32(&port), Some(5));
                prop_assert_eq!(b.world.live.get(), 1);
            } else {
                prop_assert!(b.nothing_held());
            }
        }
    }
}
