//! Panics on purpose: pv-guest-kernel's panic handler prints the message and
//! shuts the domain down with SHUTDOWN_crash.
#![no_std]
#![no_main]

use pv_guest_kernel::{StartInfo, println};

// Panicking on a known None is what this guest is for.
#[allow(clippy::unnecessary_literal_unwrap)]
fn main(_si: &'static StartInfo) {
    println!("crasher: about to panic");
    let v: Option<u32> = None;
    v.expect("deliberate panic from the crasher guest");
}

pv_guest_kernel::main!(main);
