//! blkbench: sequential 4 KiB and 64 KiB reads and writes of the guest's
//! virtual disk through blkfront, blkback and the service domain, beside
//! the service domain's own direct access to the same disk in the same
//! boot (which it leaves in our xenstore home under `bench/`). Prints
//! `BENCH|name|ns|baseline ns|ratio` rows for `cargo xtask bench`; the
//! ratio is throughput through the split driver as a share of direct
//! access (the goal: 90% or better).
#![no_std]
#![no_main]

extern crate alloc;

use blkfront::device::{BlkDevice, Buffer};
use pv_guest_kernel::xenbus::Store;
use pv_guest_kernel::xenstore::NO_TX;
use pv_guest_kernel::{StartInfo, events, gnttab, println, time, xenstore};

fn main(_si: &'static StartInfo) {
    events::init().expect("events");
    gnttab::init(1).expect("grant table");
    let mut xs = xenstore::connect().expect("xenstore");
    let mut disk = match BlkDevice::connect(&mut xs) {
        Ok(d) => d,
        Err(e) => {
            println!("bench: blkfront: cannot connect: {e:?}");
            pv_guest_kernel::rt::shutdown(guest_abi::sched::ShutdownReason::Crash)
        }
    };
    let mut buf = Buffer::new(16).expect("buffer");
    for (key, what, bytes, ops, write) in [
        ("write4k", "sequential write 4 KiB", 4096usize, 256u64, true),
        ("read4k", "sequential read 4 KiB", 4096, 256, false),
        ("write64k", "sequential write 64 KiB", 65536, 64, true),
        ("read64k", "sequential read 64 KiB", 65536, 64, false),
    ] {
        let sectors = (bytes / 512) as u64;
        let start = time::now_ns();
        let mut ok = true;
        for i in 0..ops {
            let r = if write {
                disk.write(i * sectors, &buf, bytes)
            } else {
                disk.read(i * sectors, &mut buf, bytes)
            };
            ok &= r.is_ok();
        }
        if write {
            ok &= disk.flush().is_ok();
        }
        let ns = (time::now_ns() - start) / ops;
        if !ok {
            println!("bench: blkfront {what} failed");
            continue;
        }
        report(&mut xs, key, what, "vs service domain direct", ns);
    }
    // The same streams with the ring kept full (as a streaming reader or
    // writer does): 4 KiB requests back to back, and 64 KiB units moved as
    // 1 MiB transfers.
    let mut big = Buffer::new(256).expect("buffer");
    for (key, what, bytes, ops, write) in [
        (
            "write4k",
            "sequential write 4 KiB, ring kept full",
            4096usize,
            256u64,
            true,
        ),
        (
            "read4k",
            "sequential read 4 KiB, ring kept full",
            4096,
            256,
            false,
        ),
        (
            "write64k",
            "sequential write 64 KiB, ring kept full",
            65536,
            64,
            true,
        ),
        (
            "read64k",
            "sequential read 64 KiB, ring kept full",
            65536,
            64,
            false,
        ),
    ] {
        let start = time::now_ns();
        let r = if bytes == 4096 {
            disk.stream(write, 0, ops, bytes, &buf)
        } else {
            // 16 units per 1 MiB transfer.
            (0..ops / 16).try_for_each(|i| {
                let sector = i * 2048;
                if write {
                    disk.write(sector, &big, 1 << 20)
                } else {
                    disk.read(sector, &mut big, 1 << 20)
                }
            })
        };
        let ok = r.is_ok() && (!write || disk.flush().is_ok());
        let ns = (time::now_ns() - start) / ops;
        if ok {
            report(&mut xs, key, what, "vs direct", ns);
        } else {
            println!("bench: blkfront {what} failed: {r:?}");
        }
    }
    pv_guest_kernel::rt::shutdown(guest_abi::sched::ShutdownReason::Poweroff)
}

/// Prints the row for `what` (`ns` per operation) beside the service
/// domain's direct figure for `key`, which it left in our xenstore home.
fn report<S: Store>(xs: &mut S, key: &str, what: &str, versus: &str, ns: u64) {
    let direct = xs
        .read(NO_TX, &alloc::format!("bench/{key}"))
        .ok()
        .and_then(|v| {
            core::str::from_utf8(&v)
                .ok()?
                .trim_end_matches('\0')
                .parse::<u64>()
                .ok()
        });
    match direct {
        Some(d) if ns > 0 => {
            let pct_x10 = d * 1000 / ns;
            println!(
                "BENCH|blkfront {what} ({versus})|{ns}|{d}|{}.{}%",
                pct_x10 / 10,
                pct_x10 % 10
            );
        }
        _ => println!("BENCH|blkfront {what}|{ns}"),
    }
}

pv_guest_kernel::main!(main);
