//! Host tests of the front-end half: its failure paths and the data-grant
//! budget, against a real `splitback` back-end (the loopback) with a small
//! echo device on both sides.

use alloc::string::ToString;

use guest_abi::io::echo::{EchoRequest, EchoResponse};
use guest_abi::io::ring::testing::MemPage;
use guest_abi::io::ring::{BackRing, FrontRing};
use splitback::testing::SimPage;

use super::testing::Loopback;
use super::*;

/// The back-end: refuses every front-end in `accept` if `refuse`.
struct Back {
    refuse: bool,
}

impl splitback::Backend<SimPage> for Back {
    type Device = ();
    type Conn = BackRing<SimPage, EchoRequest, EchoResponse>;
    fn device_type(&self) -> &'static str {
        "echo"
    }
    fn log_name(&self) -> &'static str {
        "back"
    }
    fn backend_nodes(&self, _: &()) -> Vec<(&'static str, String)> {
        Vec::from([("feature-x", "1".to_string())])
    }
    fn accept(&mut self, _: &(), _: &splitback::Frontend<'_>) -> Result<(), String> {
        if self.refuse {
            Err("refused".into())
        } else {
            Ok(())
        }
    }
    fn connect(
        &mut self,
        _: &mut (),
        _: &splitback::Frontend<'_>,
        rings: Vec<SimPage>,
    ) -> Result<Self::Conn, String> {
        Ok(BackRing::new(rings.into_iter().next().unwrap()))
    }
    fn serve(&mut self, _: &mut (), _: &mut Self::Conn) -> Result<splitback::Work, &'static str> {
        Ok(splitback::Work::default())
    }
    fn disconnected(&mut self, _: &mut (), _: Self::Conn) -> String {
        String::new()
    }
}

/// The front-end: wants `feature-x` = 1, holds up to 2 data grants.
struct Front {
    _ring: FrontRing<MemPage, EchoRequest, EchoResponse>,
}

impl Frontend<MemPage> for Front {
    const TYPE: &'static str = "echo";
    const FEATURE_KEYS: &'static [&'static str] = &["feature-x"];
    const DATA_GRANTS: usize = 2;
    type Offer = ();
    fn negotiate(f: &Nodes) -> Result<(), String> {
        (f.get("feature-x") == Some("1"))
            .then_some(())
            .ok_or("no x".into())
    }
    fn connected(_: (), _: &Connected<'_>, rings: Vec<MemPage>) -> Result<Self, String> {
        Ok(Self {
            _ring: FrontRing::attach(rings.into_iter().next().unwrap(), 0),
        })
    }
}

const FE: &str = "/local/domain/1/device/echo/0";

fn held(lo: &Loopback<Back>) -> (usize, usize) {
    lo.with(|w| (w.platform.grants.len(), w.platform.offered.len()))
}

#[test]
fn no_device_is_enodev() {
    let lo = Loopback::new(Back { refuse: false }, 1);
    let r = connect::<Front, _, _>(&mut lo.store(), lo.kernel(), Which::First);
    assert_eq!(r.err(), Some(Error::Errno(Errno::ENODEV)));
    lo.add("a", 0, ());
    let r = connect::<Front, _, _>(&mut lo.store(), lo.kernel(), Which::Id("7"));
    assert_eq!(r.err(), Some(Error::Errno(Errno::ENODEV)));
    assert_eq!(held(&lo), (0, 0));
}

#[test]
fn a_refused_negotiation_takes_nothing() {
    let lo = Loopback::new(Back { refuse: false }, 1);
    lo.add("a", 0, ());
    lo.with(|w| {
        w.store
            .put("/local/domain/0/backend/echo/1/0", &[("feature-x", "0")])
    });
    let r = connect::<Front, _, _>(&mut lo.store(), lo.kernel(), Which::First);
    assert_eq!(r.err(), Some(Error::Negotiation("no x".into())));
    assert_eq!(held(&lo), (0, 0));
}

#[test]
fn a_back_end_that_closes_instead_leaves_nothing_granted_or_bound() {
    let lo = Loopback::new(Back { refuse: true }, 1);
    lo.add("a", 0, ());
    let r = connect::<Front, _, _>(&mut lo.store(), lo.kernel(), Which::First);
    assert_eq!(r.err(), Some(Error::Errno(Errno::ENOTCONN)));
    assert_eq!(held(&lo), (0, 0));
    lo.with(|w| {
        assert_eq!(w.store.state(FE), XenbusState::Closed);
        assert!(w.platform.logged("back: a: cannot connect: refused"));
    });
}

#[test]
fn connects_publishes_and_closes() {
    let lo = Loopback::new(Back { refuse: false }, 1);
    lo.add("a", 0, ());
    let mut xs = lo.store();
    let (_front, link) = connect::<Front, _, _>(&mut xs, lo.kernel(), Which::Id("0")).unwrap();
    lo.with(|w| {
        assert_eq!(w.store.state(FE), XenbusState::Connected);
        let r = w.store.get(&format!("{FE}/ring-ref")).unwrap();
        assert_eq!(r, format!("{}", link.ring_refs()[0]));
        let p = w.store.get(&format!("{FE}/event-channel")).unwrap();
        assert_eq!(p, format!("{}", link.port()));
        assert_eq!(w.platform.live.get(), 1);
    });
    // The data-grant budget.
    let mut g = link.data_grants();
    assert_eq!(g.limit(), 2);
    let a = g.grant(0x1000, true);
    assert!(a.is_ok());
    assert!(g.grant(0x1000, true).is_ok());
    assert_eq!(g.grant(0x1000, true), Err(Errno::ENOSPC));
    g.end(a.unwrap()).unwrap();
    assert_eq!(g.in_use(), 1);
    assert!(g.grant(0x1000, true).is_ok());
    link.close(&mut xs).unwrap();
    lo.run_backend();
    lo.with(|w| {
        assert_eq!(w.store.state(FE), XenbusState::Closed);
        assert!(w.platform.holds_nothing());
        // Only the two data grants still held by `g` remain.
        assert_eq!(w.platform.grants.len(), 2);
    });
}
