//! The whole device on the host: the real back-end in the framework's
//! back-end, the front-end through the real handshake (the loopback).
//! `cargo test --target x86_64-unknown-linux-gnu --lib`.

use super::*;
use splitfront::testing::Loopback;

#[test]
fn gets_sets_refuses_and_closes() {
    let lo = Loopback::new(Back { max_value: 1000 }, 1);
    lo.add("alice", 0, 7);
    let mut xs = lo.store();
    let mut d = Device::connect(&mut xs, lo.kernel()).unwrap();
    assert_eq!(d.get(), Ok(7));
    assert_eq!(d.set(42), Ok(42));
    assert_eq!(d.set(1001), Err(Error::TooLarge));
    // A hostile front-end: past max-value, reserved bytes, unknown op.
    assert_eq!(d.call(OP_SET, 0, 1001), Ok((RSP_ERROR, 42)));
    assert_eq!(d.call(OP_GET, 1, 0), Ok((RSP_ERROR, 42)));
    assert_eq!(d.call(9, 0, 0), Ok((RSP_EOPNOTSUPP, 42)));
    d.close(&mut xs).unwrap();
    lo.run_backend();
    lo.with(|w| {
        // On a failure, the message shows every line the back-end logged.
        let log = &w.platform.log;
        let connected = "__NAME__back: alice connected";
        assert!(w.platform.logged(connected), "{log:#?}");
        let closed = "alice disconnected: 5 requests, register at 42";
        assert!(w.platform.logged(closed), "{log:#?}");
        assert!(w.platform.holds_nothing());
    });
}
