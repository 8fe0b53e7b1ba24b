//! The heap grows on demand: allocations far beyond the initial 256 KiB map
//! the domain's unused pages (then new frames from increase_reservation) at
//! the heap's top; an allocation beyond the domain's memory limit fails
//! cleanly instead of crashing.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use pv_guest_kernel::{StartInfo, heap, println, test::Reporter};

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let before = heap::size();
    let mut v: Vec<u64> = Vec::new();
    let want = 3 << 20; // 3 MiB of u64s
    let ok = v.try_reserve_exact(want / 8).is_ok();
    t.check(
        "reserve-3mib",
        ok,
        format_args!(
            "try_reserve of 3 MiB failed with a {} KiB heap",
            before / 1024
        ),
    );
    for i in 0..want / 8 {
        v.push(i as u64 * 0x9e37_79b9);
    }
    let good = v
        .iter()
        .enumerate()
        .all(|(i, &x)| x == i as u64 * 0x9e37_79b9);
    t.check("grown-heap-data", good, format_args!("data mismatch"));
    let after = heap::size();
    println!(
        "heapgrow: heap grew from {} KiB to {} KiB",
        before / 1024,
        after / 1024
    );
    t.check(
        "grew",
        after >= before + want,
        format_args!("{before} -> {after}"),
    );
    drop(v);
    let mut huge: Vec<u8> = Vec::new();
    let limit = (si.nr_pages as usize + 1) * 4096 * 2;
    let r = huge.try_reserve_exact(limit);
    t.check(
        "beyond-limit-fails",
        r.is_err(),
        format_args!(
            "reserving {} MiB beyond the domain's memory succeeded",
            limit >> 20
        ),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
