//! __NAME__-service: the microvisor's service domain (xenstore, consoles, the
//! built-in block and echo back-ends) plus the __NAME__ back-end: each
//! `__NAME__=NAME[:VALUE]` entry on its command line gives domain NAME a
//! device whose register starts at VALUE.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use service::CmdlineDevices;

fn main(si: &'static pv_guest_kernel::StartInfo) {
    let devices = CmdlineDevices::new(__CRATE__::Back { max_value: 1000 }, __CRATE__::TYPE, |_, arg| {
        let start = if arg.is_empty() { Ok(0) } else { arg.parse() };
        Ok((0, start.map_err(|_| alloc::format!("value '{arg}' is not a number"))?))
    });
    service::run(si, Vec::from([Box::new(devices) as Box<dyn service::Driver>]))
}

pv_guest_kernel::main!(main);
