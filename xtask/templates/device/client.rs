//! __NAME__-client: a guest using its __NAME__ device (src/lib.rs), served by
//! the service image __NAME__-service.
#![no_std]
#![no_main]

use pv_guest_kernel::{StartInfo, events, gnttab, println, xenstore};
use splitfront::kernel::Guest;

use __CRATE__::Device;

fn main(_si: &'static StartInfo) {
    events::init().expect("events");
    gnttab::init(1).expect("grant table");
    let mut xs = xenstore::connect().expect("xenstore");
    let mut dev = Device::connect(&mut xs, Guest).expect("a __NAME__ device");
    let start = dev.get();
    let set = dev.set(123);
    let now = dev.get();
    println!("__NAME__-client: register was {start:?}, set to {set:?}, now {now:?}");
    dev.close(&mut xs).expect("close");
    println!("__NAME__-client: closed");
}

pv_guest_kernel::main!(main);
