//! The service domain image: the `service` library with its built-in
//! drivers (block with `vbd=`, echo with `echo=`) and nothing else. An image
//! with a device of its own passes its drivers to `service::run` (see
//! `examples/counter`).
#![no_std]
#![no_main]

extern crate alloc;

fn main(si: &'static pv_guest_kernel::StartInfo) {
    service::run(si, alloc::vec::Vec::new())
}

pv_guest_kernel::main!(main);
