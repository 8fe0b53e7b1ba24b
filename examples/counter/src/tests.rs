//! The counter on the host: its real back-end in the framework's back-end,
//! its front-end through the framework's handshake (the loopback).

use super::*;
use splitfront::testing::Loopback;

#[test]
fn adds_reads_refuses_and_closes() {
    let lo = Loopback::new(CounterBack { max_add: 1000 }, 1);
    lo.add("alice", 0, 100);
    let mut xs = lo.store();
    let mut c = CounterDevice::connect(&mut xs, lo.kernel()).unwrap();
    assert_eq!(c.add(5), Ok(105));
    assert_eq!(c.add(1000), Ok(1105));
    assert_eq!(c.add(1001), Err(CounterError::TooMuch));
    assert_eq!(c.read(), Ok(1105));
    // A hostile front-end: past max-add, reserved bytes, unknown op.
    assert_eq!(c.raw(OP_ADD, 0, 1001), Ok((RSP_ERROR, 1105)));
    assert_eq!(c.raw(OP_READ, 1, 0), Ok((RSP_ERROR, 1105)));
    assert_eq!(c.raw(9, 0, 0), Ok((RSP_EOPNOTSUPP, 1105)));
    c.close(&mut xs).unwrap();
    lo.run_backend();
    lo.with(|w| {
        assert!(w.platform.logged("counterback: alice connected"));
        assert!(
            w.platform
                .logged("alice disconnected: 6 requests, counter at 1105")
        );
        assert!(w.platform.holds_nothing());
    });
}

#[test]
fn the_counter_never_wraps() {
    let mut total = u64::MAX - 1;
    let req = |amount| CounterRequest {
        id: 1,
        op: OP_ADD,
        pad: [0; 7],
        amount,
    };
    assert_eq!(answer(&req(1), &mut total, u64::MAX).status, RSP_OKAY);
    assert_eq!(answer(&req(1), &mut total, u64::MAX).status, RSP_ERROR);
    assert_eq!(total, u64::MAX);
}
