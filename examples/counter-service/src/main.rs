//! counter-service: a service domain image of one's own. It is the
//! microvisor's service (xenstore, consoles, the built-in block and echo
//! back-ends) plus one more back-end, the counter's, added from outside the
//! service crate: each `counter=NAME[:START]` entry on its command line
//! gives domain NAME a counter device starting at START.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use counter::CounterBack;
use service::CmdlineDevices;

fn main(si: &'static pv_guest_kernel::StartInfo) {
    let counters = CmdlineDevices::new(CounterBack { max_add: 1000 }, "counter", |_, arg| {
        let start = if arg.is_empty() { Ok(0) } else { arg.parse() };
        Ok((
            0,
            start.map_err(|_| alloc::format!("start '{arg}' is not a number"))?,
        ))
    });
    service::run(
        si,
        Vec::from([Box::new(counters) as Box<dyn service::Driver>]),
    )
}

pv_guest_kernel::main!(main);
