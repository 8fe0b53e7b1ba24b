//! xsflood: a hostile xenstore client. It tries to exhaust the service
//! domain's memory through its store ring, in the ways Xen's xenstored
//! quotas exist for, and checks each is refused or held back:
//!
//! 1. huge watch counts: sets watches with long tokens until refused
//!    (`E2BIG` or `ENOMEM`);
//! 2. the flood: writes requests on its ring as fast as there is room (reads
//!    of a 2 KiB node, and writes that fire every one of its watches) and
//!    never consumes a reply, for `flood_ms` (default 20000) of its time.
//!    Seven reads to a write. The store must stop taking its requests (back-pressure): it may
//!    consume no more than its outstanding-request quota plus what one ring
//!    of replies holds. Then it reads the replies, and every request must
//!    be answered exactly once (nothing dropped, nothing queued without
//!    bound meanwhile);
//! 3. many nodes: writes nodes until refused (`ENOSPC`: the node or node
//!    size quota; or `ENOMEM`, the memory quota);
//! 4. giant transactions: opens transactions until refused and fills each
//!    with 2 KiB nodes until refused (`ENOMEM` or `ENOSPC`).
//!
//! Meanwhile other guests use xenstore and their disks; the scenario checks
//! they finish and the service domain survives.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use guest_abi::errno::Errno;
use guest_abi::io::xenstore::{XENSTORE_RING_SIZE, XS_READ, XS_WATCH_EVENT, XS_WRITE, XsdSockmsg};
use pv_guest_kernel::xenstore::{Field, RingPage};
use pv_guest_kernel::{StartInfo, events, println, test::Reporter, time, xenstore};

const RING: u32 = XENSTORE_RING_SIZE as u32;
/// Requests the store may hold for us before it stops reading
/// (xenstored's `outstanding` quota, which the service uses).
const OUTSTANDING: u32 = 20;

fn message(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
    // The header: type, req_id, tx_id (none) and len, native byte order.
    let mut m = Vec::with_capacity(size_of::<XsdSockmsg>() + payload.len());
    for field in [ty, req_id, 0, payload.len() as u32] {
        m.extend_from_slice(&field.to_ne_bytes());
    }
    m.extend_from_slice(payload);
    m
}

/// Follows the reply stream byte by byte: counts whole replies and watch
/// events, and knows when it stands between two messages.
#[derive(Default)]
struct ReplyCounter {
    header: Vec<u8>,
    skip: usize,
    replies: u64,
    events: u64,
}

impl ReplyCounter {
    fn byte(&mut self, b: u8) {
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        self.header.push(b);
        if self.header.len() == 16 {
            let ty = u32::from_ne_bytes([
                self.header[0],
                self.header[1],
                self.header[2],
                self.header[3],
            ]);
            let len = u32::from_ne_bytes([
                self.header[12],
                self.header[13],
                self.header[14],
                self.header[15],
            ]);
            self.header.clear();
            self.skip = len as usize;
            if ty == XS_WATCH_EVENT {
                self.events += 1;
            } else {
                self.replies += 1;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.header.is_empty()
    }
}

fn quota_error(e: Errno) -> bool {
    matches!(e, Errno::ENOSPC | Errno::ENOMEM | Errno::E2BIG)
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    events::init().expect("events");
    time::init().expect("timer");
    let flood_ns = scenario_guests::arg(si, "flood_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(20_000)
        * 1_000_000;
    let mut xs = xenstore::connect().expect("xenstore");

    let big = [b'b'; 2000];
    let w = xs.write("big", &big);
    t.check("big-node", w.is_ok(), format_args!("{w:?}"));

    // 1. Huge watch counts: every one on `n`, so a write beneath fires all.
    let token: String = "t".repeat(200);
    let mut set = 0;
    let refusal = loop {
        match xs.watch("n", &format!("{token}{set}")) {
            Ok(()) => set += 1,
            Err(e) => break Some(e),
        }
        if set > 5000 {
            break None;
        }
    };
    println!("xsflood: {set} watches, then {refusal:?}");
    t.check(
        "huge-watch-count-refused",
        refusal.is_some_and(quota_error),
        format_args!("{set} watches, then {refusal:?}"),
    );
    // Take the initial events, so the reply ring starts empty (and the
    // flood below starts between two messages).
    for _ in 0..3 {
        while let Ok(Some(_)) = xs.poll_watch_event() {}
        let _ = time::sleep(50_000_000);
    }

    // 2. The flood, on the raw ring: never consume a reply.
    let page = xs.page();
    let port = pv_guest_kernel::Port(si.store_evtchn);
    let start_cons = page.load(Field::ReqCons);
    let mut prod = page.load(Field::ReqProd);
    let mut counter = ReplyCounter::default();
    let mut sent: u64 = 0;
    let mut offered: u64 = 0;
    let deadline = time::now_ns() + flood_ns;
    while time::now_ns() < deadline {
        let cons = page.load(Field::ReqCons);
        page.fence();
        loop {
            let msg = if sent % 8 != 7 {
                message(XS_READ, sent as u32, b"big\0")
            } else {
                message(XS_WRITE, sent as u32, b"n/0\0y")
            };
            if RING - prod.wrapping_sub(cons) < msg.len() as u32 {
                break;
            }
            for &b in &msg {
                page.write_req((prod % RING) as usize, &[b]);
                prod = prod.wrapping_add(1);
            }
            sent += 1;
            offered += msg.len() as u64;
        }
        page.write_fence();
        page.store(Field::ReqProd, prod);
        let _ = events::send(port);
        let _ = guest_abi::hypercall::sched_yield();
    }
    let taken = page.load(Field::ReqCons).wrapping_sub(start_cons);
    // Held back: at most the outstanding replies plus one ring of replies
    // (as small as 19 bytes each) worth of requests, of at most 21 bytes.
    let bound = (OUTSTANDING + RING / 19 + 2) * 21;
    println!("xsflood: flooded {sent} requests ({offered} bytes); the store took {taken} bytes");
    t.check(
        "flood-held-back",
        taken <= bound && u64::from(taken) < offered,
        format_args!("the store took {taken} bytes of {offered} (bound {bound})"),
    );

    // Now read: the store resumes, and answers every request once.
    let mut rounds: u64 = 0;
    loop {
        let rprod = page.load(Field::RspProd);
        page.read_fence();
        let mut rcons = page.load(Field::RspCons);
        while rcons != rprod {
            let mut b = [0u8];
            page.read_rsp((rcons % RING) as usize, &mut b);
            counter.byte(b[0]);
            rcons = rcons.wrapping_add(1);
        }
        page.fence();
        page.store(Field::RspCons, rcons);
        let _ = events::send(port);
        if counter.replies >= sent && counter.at_boundary() && page.load(Field::ReqCons) == prod {
            break;
        }
        rounds += 1;
        if rounds > 50_000_000 {
            break;
        }
        let _ = guest_abi::hypercall::sched_yield();
    }
    println!(
        "xsflood: read {} replies and {} watch events",
        counter.replies, counter.events
    );
    t.check(
        "flood-every-request-answered",
        counter.replies == sent,
        format_args!("{} replies to {sent} requests", counter.replies),
    );

    // A client picking up where the ring stands.
    let mut xs = xenstore::connect().expect("xenstore");
    // 3. Many nodes (beneath `m`, which nothing watches).
    let mut made = 0;
    let refusal = loop {
        match xs.write(&format!("m/{made}"), b"x") {
            Ok(()) => made += 1,
            Err(e) => break Some(e),
        }
        if made > 5000 {
            break None;
        }
    };
    println!("xsflood: {made} nodes, then {refusal:?}");
    t.check(
        "many-nodes-refused",
        refusal.is_some_and(quota_error),
        format_args!("{made} nodes, then {refusal:?}"),
    );

    // 4. Giant transactions (the nodes of step 3 go first, so the memory
    // quota is what binds).
    let rm = xs.rm("m");
    t.check("nodes-removed", rm.is_ok(), format_args!("{rm:?}"));
    // Each transaction creates a deep path (hundreds of nodes with long
    // paths in one request) and then 2 KiB nodes.
    let deep: String = (0..400).map(|_| "d/").collect::<String>() + "end";
    let value = [b'g'; 1900];
    let mut opened = Vec::new();
    let mut tx_refusal = None;
    let mut write_refusal = None;
    let mut writes = 0;
    for _ in 0..64 {
        let tx = match xs.transaction_start() {
            Ok(tx) => tx,
            Err(e) => {
                tx_refusal = Some(e);
                break;
            }
        };
        opened.push(tx);
        let mut result = xs.write_tx(tx, &format!("g{tx}/{deep}"), b"");
        for i in 0..64 {
            if result.is_err() {
                break;
            }
            writes += 1;
            result = xs.write_tx(tx, &format!("g{tx}/v{i}"), &value);
        }
        if let Err(e) = result {
            write_refusal.get_or_insert(e);
        }
    }
    println!("xsflood: {writes} writes in transactions");
    println!(
        "xsflood: {} transactions open, then {tx_refusal:?}; writes refused with {write_refusal:?}",
        opened.len()
    );
    t.check(
        "giant-transactions-refused",
        tx_refusal.is_some_and(quota_error) && write_refusal.is_some_and(quota_error),
        format_args!("{tx_refusal:?} {write_refusal:?}"),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
