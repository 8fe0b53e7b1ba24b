//! xsclient: a guest using the xenstore the service domain runs, through
//! its start_info store ring (pv-guest-kernel's client), then its console
//! ring. Two of them (`role=a`, domain 1; `role=b`, domain 2) show: their
//! home directories and the toolstack's `name`/`domid` and
//! `cpu/N/availability` nodes; write, read,
//! mkdir, directory, rm, get/set_perms; errors (ENOENT, EACCES on the other
//! domain's home, EINVAL for a bad path); a watch firing on a local write
//! and on the other domain's write to a node shared with read permission; a
//! transaction committing, and one failing with EAGAIN after a conflicting
//! write; get_domain_path; a message larger than the 1 KiB ring.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use core::sync::atomic::{AtomicU32, Ordering};
use guest_abi::errno::Errno;
use guest_abi::io::console::{
    XENCONS_OUT_CONS_OFFSET, XENCONS_OUT_OFFSET, XENCONS_OUT_PROD_OFFSET, out_slot,
};
use pv_guest_kernel::{StartInfo, events, mm, println, test::Reporter, xenstore};

/// Writes `text` into our console ring and notifies the back-end; waits
/// (bounded) until it is consumed.
fn ring_print(si: &StartInfo, text: &[u8]) -> bool {
    let page = mm::mfn_to_pfn(si.console.mfn) * 4096;
    let at = |off: usize| page + off as u64;
    // SAFETY: the console page is ours, mapped writable by the builder;
    // its indexes are aligned u32s at these offsets (`XenconsInterface`).
    let (out_cons, out_prod) = unsafe {
        (
            AtomicU32::from_ptr(at(XENCONS_OUT_CONS_OFFSET) as *mut u32),
            AtomicU32::from_ptr(at(XENCONS_OUT_PROD_OFFSET) as *mut u32),
        )
    };
    let mut prod = out_prod.load(Ordering::SeqCst);
    for &b in text {
        let slot = at(XENCONS_OUT_OFFSET + out_slot(prod));
        // SAFETY: inside the out ring of our console page.
        unsafe { core::ptr::write_volatile(slot as *mut u8, b) };
        prod = prod.wrapping_add(1);
    }
    out_prod.store(prod, Ordering::SeqCst);
    let _ = events::send(pv_guest_kernel::Port(si.console.evtchn));
    for _ in 0..100_000 {
        if out_cons.load(Ordering::SeqCst) == prod {
            return true;
        }
        let _ = guest_abi::hypercall::sched_yield();
    }
    false
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    events::init().expect("events");
    let role_b = scenario_guests::arg(si, "role") == Some("b");
    let (me, peer) = if role_b { (2u16, 1u16) } else { (1, 2) };
    let mut xs = match xenstore::connect() {
        Ok(c) => c,
        Err(e) => {
            t.fail("connect", format_args!("{e:?}"));
            t.finish()
        }
    };
    let name = xs.read("name");
    t.check(
        "toolstack-name",
        name.as_deref() == Ok(if role_b { b"xs-b" as &[u8] } else { b"xs-a" }),
        format_args!("{name:?}"),
    );
    let domid = xs.read("domid");
    t.check(
        "toolstack-domid",
        domid == Ok(format!("{me}").into_bytes()),
        format_args!("{domid:?}"),
    );
    // The toolstack's vCPU nodes: `cpu/N/availability = online` for each
    // of our vCPUs, no more (`vcpus=N` here says how many the manifest
    // gives us; default 1).
    let vcpus: usize = scenario_guests::arg(si, "vcpus")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let cpus = xs.directory("cpu");
    let online = (0..vcpus)
        .all(|n| xs.read(&format!("cpu/{n}/availability")).as_deref() == Ok(b"online" as &[u8]));
    t.check(
        "toolstack-cpu-availability",
        online && cpus.as_ref().is_ok_and(|d| d.len() == vcpus),
        format_args!("{cpus:?}"),
    );
    let path = xs.get_domain_path(pv_guest_kernel::DomId(me));
    t.check(
        "get-domain-path",
        path.as_deref() == Ok(format!("/local/domain/{me}").as_str()),
        format_args!("{path:?}"),
    );

    // Local operations.
    let w = xs.write("data/x", b"1");
    let r = xs.read("data/x");
    t.check(
        "write-read",
        w.is_ok() && r.as_deref() == Ok(b"1" as &[u8]),
        format_args!("{w:?} {r:?}"),
    );
    let m = xs.mkdir("data/dir");
    let d = xs.directory("data");
    t.check(
        "mkdir-directory",
        m.is_ok()
            && d.as_ref()
                .is_ok_and(|d| d.iter().any(|e| e == "x") && d.iter().any(|e| e == "dir")),
        format_args!("{m:?} {d:?}"),
    );
    let rm = xs.rm("data/dir");
    let gone = xs.read("data/dir");
    t.check(
        "rm",
        rm.is_ok() && gone == Err(Errno::ENOENT),
        format_args!("{rm:?} {gone:?}"),
    );
    let missing = xs.read("no/such/node");
    t.check(
        "enoent",
        missing == Err(Errno::ENOENT),
        format_args!("{missing:?}"),
    );
    let other = xs.read(&format!("/local/domain/{peer}/name"));
    t.check(
        "eacces-other-home",
        other == Err(Errno::EACCES),
        format_args!("{other:?}"),
    );
    let bad = xs.write("bad//path", b"x");
    t.check(
        "einval-bad-path",
        bad == Err(Errno::EINVAL),
        format_args!("{bad:?}"),
    );
    let perms = xs.get_perms("data/x");
    t.check(
        "get-perms",
        perms
            .as_ref()
            .is_ok_and(|p| p.first().map(String::as_str) == Some(&*format!("n{me}"))),
        format_args!("{perms:?}"),
    );

    // A value larger than the ring (1 KiB) travels in pieces (xenstored's
    // default node quota is 2 KiB).
    let big = vec![b'z'; 1800];
    let wb = xs.write("data/big", &big);
    let rb = xs.read("data/big");
    t.check(
        "bigger-than-ring",
        wb.is_ok() && rb.as_deref() == Ok(&big[..]),
        format_args!("{wb:?} {:?}", rb.map(|v| v.len())),
    );

    // A watch on our own subtree.
    let wa = xs.watch("data", "local-token");
    let first = xs.wait_watch_event("local-token");
    t.check(
        "watch-initial-event",
        wa.is_ok() && first.is_ok(),
        format_args!("{wa:?} {first:?}"),
    );
    let _ = xs.write("data/y", b"2");
    let ev = xs.wait_watch_event("local-token");
    t.check(
        "watch-fires",
        ev.as_ref().is_ok_and(|e| e.path.ends_with("data/y")),
        format_args!("{ev:?}"),
    );

    // Transactions: one commits; one conflicts with a write made meanwhile.
    let tx = xs.transaction_start();
    let committed = tx.and_then(|tx| {
        xs.write_tx(tx, "data/t", b"in-tx")?;
        xs.transaction_end(tx, true)
    });
    let tv = xs.read("data/t");
    t.check(
        "transaction-commits",
        committed.is_ok() && tv.as_deref() == Ok(b"in-tx" as &[u8]),
        format_args!("{committed:?} {tv:?}"),
    );
    let tx2 = xs.transaction_start();
    let conflict = tx2.and_then(|tx| {
        let _ = xs.read_tx(tx, "data/x")?;
        xs.write_tx(tx, "data/x", b"from-tx")?;
        xs.write("data/x", b"outside")?;
        xs.transaction_end(tx, true)
    });
    let after = xs.read("data/x");
    t.check(
        "transaction-conflict-eagain",
        conflict == Err(Errno::EAGAIN) && after.as_deref() == Ok(b"outside" as &[u8]),
        format_args!("{conflict:?} {after:?}"),
    );

    // Between the two domains: b shares a node readable by a, and a node a
    // may write its answer to; a watches the first and answers in the
    // second. The answer lives in b's own subtree: a's home goes when a
    // ends (the service removes a dead domain's home, as a toolstack
    // does), which may be before b reads it.
    let shared = String::from("/local/domain/2/shared");
    let answer = String::from("/local/domain/2/answer");
    if role_b {
        let slot = xs.write(&answer, b"waiting");
        let sp_slot = xs.set_perms(&answer, &["n2", "b1"]);
        let mk = xs.write(&shared, b"ready");
        let sp = xs.set_perms(&shared, &["n2", "r1"]);
        t.check(
            "share-with-peer",
            slot.is_ok() && sp_slot.is_ok() && mk.is_ok() && sp.is_ok(),
            format_args!("{slot:?} {sp_slot:?} {mk:?} {sp:?}"),
        );
        let _ = xs.watch(&answer, "answer");
        let mut got = None;
        for _ in 0..50 {
            match xs.read(&answer) {
                Ok(v) if v != b"waiting" => {
                    got = Some(v);
                    break;
                }
                _ => {}
            }
            let _ = xs.wait_watch_event("answer");
        }
        t.check(
            "peer-answer",
            got.as_deref() == Some(b"seen ready" as &[u8]),
            format_args!("{got:?}"),
        );
    } else {
        let _ = xs.watch(&shared, "peer");
        let mut seen = None;
        for _ in 0..50 {
            if let Ok(v) = xs.read(&shared) {
                seen = Some(v);
                break;
            }
            let _ = xs.wait_watch_event("peer");
        }
        t.check(
            "read-peer-shared-node",
            seen.as_deref() == Some(b"ready" as &[u8]),
            format_args!("{seen:?}"),
        );
        // A write to a node of b's that b let us write: its owner and
        // permissions stay b's.
        let w = xs.write(&answer, b"seen ready");
        t.check("answer-peer", w.is_ok(), format_args!("{w:?}"));
    }

    let printed = ring_print(
        si,
        format!(
            "hello from {} through the console ring\n",
            if role_b { "b" } else { "a" }
        )
        .as_bytes(),
    );
    t.check(
        "console-ring-drained",
        printed,
        format_args!("the back-end never consumed the ring"),
    );
    println!("xsclient: {} done", if role_b { "b" } else { "a" });
    t.finish()
}

pv_guest_kernel::main!(main);
