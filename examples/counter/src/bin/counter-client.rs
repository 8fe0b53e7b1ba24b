//! counter-client: a guest using its counter device (examples/counter)
//! served by a service image built outside the service crate
//! (examples/counter-service): adds 1..=10, reads the total back, checks
//! the back-end's refusals, closes.
#![no_std]
#![no_main]

use counter::{CounterDevice, CounterError, OP_READ, RSP_EOPNOTSUPP, RSP_ERROR};
use pv_guest_kernel::{StartInfo, events, gnttab, println, test::Reporter, xenstore};
use splitfront::kernel::Guest;

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    events::init().expect("events");
    gnttab::init(1).expect("grant table");
    let mut xs = xenstore::connect().expect("xenstore");
    let mut c = match CounterDevice::connect(&mut xs, Guest) {
        Ok(c) => c,
        Err(e) => {
            t.fail("connect", format_args!("{e:?}"));
            t.finish()
        }
    };
    let start = c.read();
    let mut last = Ok(0);
    for n in 1..=10 {
        last = c.add(n);
    }
    println!("counter-client: started at {start:?}, after adding 1..=10: {last:?}");
    t.check(
        "adds",
        matches!((&start, &last), (Ok(s), Ok(l)) if *l == *s + 55),
        format_args!("{start:?} {last:?}"),
    );
    t.check("read", c.read() == last, format_args!("{last:?}"));
    let too_much = c.add(u64::MAX);
    t.check(
        "too-much-not-sent",
        too_much == Err(CounterError::TooMuch),
        format_args!("{too_much:?}"),
    );
    let refused = (c.raw(OP_READ, 7, 0), c.raw(42, 0, 0));
    t.check(
        "hostile-refused",
        matches!(refused, (Ok((RSP_ERROR, _)), Ok((RSP_EOPNOTSUPP, _)))),
        format_args!("{refused:?}"),
    );
    let closed = c.close(&mut xs);
    t.check("close", closed.is_ok(), format_args!("{closed:?}"));
    t.finish()
}

pv_guest_kernel::main!(main);
