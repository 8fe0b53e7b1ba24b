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
    let back = __CRATE__::Back { max_value: 1000 };
    let devices = CmdlineDevices::new(back, __CRATE__::TYPE, |_, arg| {
        let start = if arg.is_empty() { Ok(0) } else { arg.parse() };
        let start = start.map_err(|_| alloc::format!("value '{arg}' is not a number"))?;
        Ok((0, start))
    });
    let mut drivers: Vec<Box<dyn service::Driver>> = Vec::new();
    drivers.push(Box::new(devices));
    service::run(si, drivers)
}

pv_guest_kernel::main!(main);
