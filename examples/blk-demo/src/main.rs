//! examples/blk-demo: a guest that uses its virtual disk. Copy this to start
//! a guest that stores data.
//!
//! The disk is a split device. The service domain (`backends/service`)
//! drives the real disk and, for each domain named in its `vbd=` command
//! line option, runs a block back-end over a slice of it. This guest runs
//! the front-end, `blkfront`, which does the whole dance for us:
//!
//! 1. finds the device in xenstore (`device/vbd/51712`, i.e. `xvda`);
//! 2. shares a ring page with the back-end (a grant) and an event channel;
//! 3. turns each read/write/flush into requests on that ring, granting the
//!    back-end access to exactly the pages of our buffer, for as long as
//!    the request is in flight.
//!
//! Here: connect, print the disk's size, write a greeting at sector 0, flush
//! (make it durable), read it back into another buffer, print it, power off.
//! Any failure prints what went wrong and crashes the domain, so a manifest
//! expecting `poweroff` notices.
//!
//! Boot it with `cargo xtask test --filter blk-demo`
//! (tests/scenarios/blk-demo.toml: examples/blk-demo/blk-demo.manifest plus
//! a 16 MiB disk for the service domain).
#![no_std]
#![no_main]

extern crate alloc;

use blkfront::device::{BlkDevice, Buffer};
use guest_abi::sched::ShutdownReason;
use pv_guest_kernel::{StartInfo, events, gnttab, println, rt, xenstore};

/// What we store at the start of the disk.
const GREETING: &[u8] = b"Hello, disk! (written by examples/blk-demo)";

/// Sectors are 512 bytes on the block protocol, whatever the real disk's
/// sector size; every transfer is a whole number of them.
const SECTOR: usize = 512;

/// Prints why we stop and crashes the domain.
fn fail(what: &str, why: impl core::fmt::Debug) -> ! {
    println!("blk-demo: {what} failed: {why:?}");
    rt::shutdown(ShutdownReason::Crash)
}

fn main(_si: &'static StartInfo) {
    // Event channels: the back-end tells us a request is done by signalling
    // one. `init` maps shared_info and installs the event upcall.
    if let Err(e) = events::init() {
        fail("event channel setup", e);
    }
    // Our grant table: one frame holds 512 references, plenty for a ring
    // page and a few data pages in flight.
    if let Err(e) = gnttab::init(1) {
        fail("grant table setup", e);
    }
    // Xenstore, through the store ring the domain builder gave us: that is
    // where the service domain described our disk.
    let mut xs = match xenstore::connect() {
        Ok(xs) => xs,
        Err(e) => fail("xenstore connection", e),
    };

    // The xenbus handshake with the back-end. Returns once both ends are
    // Connected; the disk's size and features come from the back-end's
    // xenstore nodes. ENODEV: no virtual disk was created for us (the
    // service domain needs a real disk and `vbd=<our name>`).
    let mut disk = match BlkDevice::connect(&mut xs) {
        Ok(d) => d,
        Err(e) => fail("connecting to the virtual disk", e),
    };
    let info = *disk.info();
    println!(
        "blk-demo: disk xvda has {} sectors ({} KiB), served by domain {}",
        info.sectors,
        info.sectors * SECTOR as u64 / 1024,
        disk.link().backend
    );

    // Data goes through whole pages the back-end is granted access to, so
    // buffers are page-aligned `Buffer`s (one page here), not slices.
    let mut out = match Buffer::new(1) {
        Ok(b) => b,
        Err(e) => fail("allocating a buffer", e),
    };
    out.bytes_mut()[..GREETING.len()].copy_from_slice(GREETING);

    // Write one sector (the rest of it is zeros) at sector 0. When this
    // returns, the back-end has written it to the disk, but possibly only
    // to the disk's cache.
    if let Err(e) = disk.write(0, &out, SECTOR) {
        fail("writing sector 0", e);
    }
    println!("blk-demo: wrote {} bytes at sector 0", GREETING.len());
    // Flush: every write acknowledged so far is now durable.
    if let Err(e) = disk.flush() {
        fail("flushing", e);
    }
    println!("blk-demo: flushed");

    // Read the sector back into a second buffer and compare.
    let mut back = match Buffer::new(1) {
        Ok(b) => b,
        Err(e) => fail("allocating a buffer", e),
    };
    if let Err(e) = disk.read(0, &mut back, SECTOR) {
        fail("reading sector 0", e);
    }
    let got = &back.bytes()[..GREETING.len()];
    println!(
        "blk-demo: read back \"{}\"",
        core::str::from_utf8(got).unwrap_or("<not UTF-8>")
    );
    if got != GREETING {
        fail(
            "comparing",
            "the sector read back differs from what was written",
        );
    }
    println!("blk-demo: done, powering off");
    // Returning from main powers the domain off. (The back-end notices
    // through xenstore and the hypervisor, and lets go of our ring.)
}

pv_guest_kernel::main!(main);
