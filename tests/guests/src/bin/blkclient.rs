//! blkclient: a guest using its virtual disk (`xvda`) through blkfront, the
//! block back-end in the service domain and the real (QEMU virtio) disk.
//! Connects through xenstore (xenbus handshake), checks the negotiated
//! size and features, writes a pattern with several multi-segment requests
//! in flight, flushes, reads it back into another buffer and compares.
//!
//! `rounds=N` (mode rw) repeats the write, flush and read-back N times.
//! `delay_ms=N` sleeps that long before starting (a guest that starts its
//! work late, beside others). `xs_rounds=N` also uses xenstore the ordinary
//! way N times after connecting: write, read, directory, a transaction
//! (retried on EAGAIN) and a watch that must fire.
//!
//! `mode=persist` splits that across QEMU boots on the same disk image
//! (`boot=N` on the command line): boot 1 writes and flushes the pattern and
//! says so (the scenario kills QEMU right then); boot 2 reads it back.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use blkfront::device::{BlkDevice, Buffer};
use pv_guest_kernel::{StartInfo, events, gnttab, println, test::Reporter, xenstore};

/// The pattern for byte `i` of sector `s`, different per `seed`.
fn pattern(seed: u64, s: u64, i: usize) -> u8 {
    (s.wrapping_mul(31)
        .wrapping_add(i as u64)
        .wrapping_add(seed.wrapping_mul(7))
        % 251) as u8
}

fn fill(buf: &mut Buffer, seed: u64, first_sector: u64, len: usize) {
    for (i, b) in buf.bytes_mut()[..len].iter_mut().enumerate() {
        *b = pattern(seed, first_sector + (i / 512) as u64, i % 512);
    }
}

fn matches(buf: &Buffer, seed: u64, first_sector: u64, len: usize) -> Option<usize> {
    buf.bytes()[..len]
        .iter()
        .enumerate()
        .position(|(i, &b)| b != pattern(seed, first_sector + (i / 512) as u64, i % 512))
}

/// Ordinary xenstore use, `rounds` times; the first thing that went wrong.
fn use_xenstore(xs: &mut xenstore::KernelClient, rounds: u32) -> Result<(), alloc::string::String> {
    xs.watch("data/w", "w")
        .map_err(|e| format!("watch: {e:?}"))?;
    xs.wait_watch_event("w")
        .map_err(|e| format!("initial event: {e:?}"))?;
    for r in 0..rounds {
        let v = format!("value {r}");
        xs.write("data/x", v.as_bytes())
            .map_err(|e| format!("write: {e:?}"))?;
        let got = xs.read("data/x").map_err(|e| format!("read: {e:?}"))?;
        if got != v.as_bytes() {
            return Err(format!("read back {got:?}"));
        }
        let d = xs
            .directory("data")
            .map_err(|e| format!("directory: {e:?}"))?;
        if !d.iter().any(|e| e == "x") {
            return Err(format!("directory {d:?}"));
        }
        let mut tries = 0;
        loop {
            let tx = xs
                .transaction_start()
                .map_err(|e| format!("transaction start: {e:?}"))?;
            xs.write_tx(tx, "data/t", v.as_bytes())
                .map_err(|e| format!("write in transaction: {e:?}"))?;
            match xs.transaction_end(tx, true) {
                Ok(()) => break,
                Err(guest_abi::errno::Errno::EAGAIN) if tries < 10 => tries += 1,
                Err(e) => return Err(format!("commit: {e:?}")),
            }
        }
        xs.write("data/w", v.as_bytes())
            .map_err(|e| format!("write watched: {e:?}"))?;
        xs.wait_watch_event("w")
            .map_err(|e| format!("watch event: {e:?}"))?;
    }
    xs.unwatch("data/w", "w")
        .map_err(|e| format!("unwatch: {e:?}"))?;
    Ok(())
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    events::init().expect("events");
    gnttab::init(1).expect("grant table");
    let mode = scenario_guests::arg(si, "mode").unwrap_or("rw");
    let boot: u64 = scenario_guests::arg(si, "boot")
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    if let Some(ms) = scenario_guests::arg(si, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        pv_guest_kernel::time::init().expect("timer");
        let _ = pv_guest_kernel::time::sleep(ms * 1_000_000);
        println!("blkclient: starting after {ms} ms");
    }
    let mut xs = xenstore::connect().expect("xenstore");
    let xs_rounds: u32 = scenario_guests::arg(si, "xs_rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if xs_rounds > 0 {
        let used = use_xenstore(&mut xs, xs_rounds);
        t.check("xenstore-use", used.is_ok(), format_args!("{used:?}"));
    }
    let mut disk = match BlkDevice::connect(&mut xs) {
        Ok(d) => d,
        Err(e) => {
            t.fail("connect", format_args!("{e:?}"));
            t.finish()
        }
    };
    let info = *disk.info();
    t.check(
        "negotiated",
        info.sectors >= 1024 && !info.read_only() && info.flush_cache,
        format_args!("{info:?}"),
    );
    println!(
        "blkclient: xvda has {} sectors, backend domain {}",
        info.sectors,
        disk.link().backend
    );

    const PAGES: usize = 24; // 96 KiB: three requests of up to 11 pages
    let len = PAGES * 4096;
    let mut out = Buffer::new(PAGES).expect("buffer");
    let mut back = Buffer::new(PAGES).expect("buffer");
    let sector = 64;
    match mode {
        "persist" if boot == 1 => {
            fill(&mut out, 1000, sector, len);
            let w = disk.write(sector, &out, len);
            let f = disk.flush();
            t.check(
                "persist-write-flush",
                w.is_ok() && f.is_ok(),
                format_args!("{w:?} {f:?}"),
            );
            println!("blkclient: pattern written and flushed");
            // The scenario kills QEMU here; keep the domain alive meanwhile.
            for _ in 0..1000 {
                let _ = pv_guest_kernel::time::sleep(10_000_000);
            }
        }
        "persist" => {
            let r = disk.read(sector, &mut back, len);
            let bad = matches(&back, 1000, sector, len);
            t.check(
                "persist-read-back",
                r.is_ok() && bad.is_none(),
                format_args!("{r:?}, first difference at byte {bad:?}"),
            );
        }
        _ => {
            // `rounds=N` repeats the write, flush and read-back N times with a
            // new pattern each round (to keep I/O going beside other guests);
            // each step is reported once, with the first round that failed.
            let rounds: u64 = scenario_guests::arg(si, "rounds")
                .and_then(|r| r.parse().ok())
                .unwrap_or(1)
                .max(1);
            let (mut w_fail, mut f_fail, mut r_fail) = (None, None, None);
            for round in 0..rounds {
                let seed = boot + round;
                fill(&mut out, seed, sector, len);
                let w = disk.write(sector, &out, len);
                if w.is_err() && w_fail.is_none() {
                    w_fail = Some((round, format!("{w:?}")));
                }
                let f = disk.flush();
                if f.is_err() && f_fail.is_none() {
                    f_fail = Some((round, format!("{f:?}")));
                }
                let r = disk.read(sector, &mut back, len);
                let bad = matches(&back, seed, sector, len);
                if (r.is_err() || bad.is_some()) && r_fail.is_none() {
                    r_fail = Some((round, format!("{r:?}, first difference at byte {bad:?}")));
                }
                if rounds > 1 {
                    println!("blkclient: round {} of {rounds} done", round + 1);
                }
            }
            t.check("write", w_fail.is_none(), format_args!("{w_fail:?}"));
            t.check("flush", f_fail.is_none(), format_args!("{f_fail:?}"));
            t.check("read-back", r_fail.is_none(), format_args!("{r_fail:?}"));
            // The last sector of the disk is readable; one past it is
            // refused by the front-end before it reaches the ring.
            let last = disk.read(info.sectors - 8, &mut back, 4096);
            t.check("last-page", last.is_ok(), format_args!("{last:?}"));
            let past = disk.read(info.sectors - 7, &mut back, 4096);
            t.check("past-end-refused", past.is_err(), format_args!("{past:?}"));
            // More requests than the ring holds, kept in flight: every
            // answer is collected, whatever order they are seen in.
            let stream = disk.stream(false, 0, 100, 4096, &back);
            t.check(
                "stream-past-ring-size",
                stream.is_ok(),
                format_args!("{stream:?}"),
            );
            let errs = disk.front().protocol_error_count();
            t.check("no-protocol-errors", errs == 0, format_args!("{errs}"));
        }
    }
    t.finish()
}

pv_guest_kernel::main!(main);
