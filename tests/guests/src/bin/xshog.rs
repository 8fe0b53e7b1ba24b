//! xshog: a hostile xenstore client that tries to make the service domain's
//! heap run out, staying inside its own per-domain quotas: several of them
//! together (with the quota on all domains together lifted) ask for more
//! than the service domain's heap holds. It
//!
//! 1. writes 1.9 KiB nodes until refused (the node quota, its memory quota,
//!    or the service's heap: `ENOSPC`/`ENOMEM`);
//! 2. opens transactions and fills each with 1.9 KiB nodes until refused;
//! 3. sets watches with long tokens until refused;
//!
//! then reports what refused it and holds all of it for `hold_ms` (so
//! others run while the heap is at its limit) before powering off, which
//! frees it. The
//! scenario checks the service domain survives and the well-behaved
//! guests beside it are served.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;
use guest_abi::errno::Errno;
use pv_guest_kernel::{StartInfo, println, test::Reporter, time, xenstore};

fn refused(e: Errno) -> bool {
    matches!(e, Errno::ENOSPC | Errno::ENOMEM | Errno::E2BIG)
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    time::init().expect("timer");
    let hold_ms: u64 = scenario_guests::arg(si, "hold_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut xs = xenstore::connect().expect("xenstore");
    let value = [b'h'; 1900];
    let mut enomem = 0u32;

    // 1. Nodes.
    let mut nodes = 0;
    let first = loop {
        match xs.write(&format!("hog/n{nodes}"), &value) {
            Ok(()) => nodes += 1,
            Err(e) => break Some(e),
        }
        if nodes > 4000 {
            break None;
        }
    };
    enomem += u32::from(first == Some(Errno::ENOMEM));
    println!("xshog: {nodes} nodes, then {first:?}");
    t.check(
        "nodes-refused",
        first.is_some_and(refused),
        format_args!("{nodes} nodes, then {first:?}"),
    );

    // 2. Transactions, each filled until refused.
    let mut open = Vec::new();
    let mut writes = 0;
    let mut tx_refusal = None;
    for _ in 0..64 {
        let tx = match xs.transaction_start() {
            Ok(tx) => tx,
            Err(e) => {
                tx_refusal = Some(e);
                break;
            }
        };
        open.push(tx);
        for i in 0..256 {
            match xs.write_tx(tx, &format!("hog/t{tx}/v{i}"), &value) {
                Ok(()) => writes += 1,
                Err(e) => {
                    enomem += u32::from(e == Errno::ENOMEM);
                    break;
                }
            }
        }
    }
    enomem += u32::from(tx_refusal == Some(Errno::ENOMEM));
    println!(
        "xshog: {} transactions with {writes} writes, then {tx_refusal:?}",
        open.len()
    );
    t.check(
        "transactions-refused",
        tx_refusal.is_some_and(refused),
        format_args!("{tx_refusal:?}"),
    );

    // 3. Watches with long tokens.
    let token: alloc::string::String = core::iter::repeat_n('w', 1000).collect();
    let mut watches = 0;
    let w_refusal = loop {
        match xs.watch(&format!("hog/w{watches}"), &format!("{token}{watches}")) {
            Ok(()) => watches += 1,
            Err(e) => break Some(e),
        }
        if watches > 1000 {
            break None;
        }
    };
    enomem += u32::from(w_refusal == Some(Errno::ENOMEM));
    println!("xshog: {watches} watches, then {w_refusal:?}");
    t.check(
        "watches-refused",
        w_refusal.is_some_and(refused),
        format_args!("{w_refusal:?}"),
    );
    println!("xshog: {enomem} refusals were ENOMEM; holding everything for {hold_ms} ms");

    // Then end, without another request: with every hog at its limit, a
    // request could be held back until memory is freed, which only a
    // hog's end does.
    let _ = time::sleep(hold_ms * 1_000_000);
    t.finish()
}

pv_guest_kernel::main!(main);
