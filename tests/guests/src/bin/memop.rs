//! memory_op's extent-list calls (`increase_reservation`,
//! `decrease_reservation`, `populate_physmap`) answered as Xen 4.17 answers
//! them, on the microvisor and on real Xen alike (`xen-memop` runs this
//! guest as dom0): never an error code, always the number of extents done,
//! which is the start extent (`cmd >> 6`) when the call is refused before
//! its first extent:
//! - an argument structure that cannot be read, a count too large to
//!   continue (above `0xffffffff >> 6`), a start at or past the count, a
//!   domain that does not exist, an address width of at most 12 bits, an
//!   extent order above the caller's maximum (9 for a guest, 18 for a
//!   privileged domain) or another domain named by an unprivileged caller
//!   answer the start;
//! - an extent slot that cannot be read or written ends the call with the
//!   count done so far, on its first extent too;
//! - a continued call (start in `cmd`) runs from its start and counts the
//!   extents before it.
//!
//! `role=privileged` (the default, also dom0 on real Xen) or `role=domu`
//! (the order limit of a guest, and another domain refused).
//!
//! `peer=D` (privileged only; the microvisor's `memop` scenario, where
//! domain D exists: real Xen's dom0 has no other domain without a
//! toolstack) adds the calls a toolstack makes on another domain, applied
//! to D as Xen applies them: frames given to D and taken back from it,
//! counted in D's reservation and against D's limit, the extent list in
//! the caller's memory, the order limited by the caller's maximum (18), and
//! a frame that is not D's refused.
#![no_std]
#![no_main]

use guest_abi::memory::{
    XENMEM_DECREASE_RESERVATION as DEC, XENMEM_INCREASE_RESERVATION as INC,
    XENMEM_POPULATE_PHYSMAP as POP, XenMemoryReservation,
};
use pv_guest_kernel::mm;
use pv_guest_kernel::{StartInfo, println, test::Reporter};

const SELF: u16 = guest_abi::types::DomId::SELF.0;
/// Bit 47 set: not canonical, never readable.
const NONCANONICAL: u64 = 0x0000_8000_0000_0000;
/// One page mapped here, the page after it not: a list ending at the
/// page's last word has its next slots unreadable.
const WINDOW: u64 = 0x0000_0040_0000_0000;
const PAGE: u64 = 4096;

/// memory_op(op | start << 6, arg), the raw answer.
fn memop(op: u32, start: u64, arg: u64) -> i64 {
    // SAFETY: the hypervisor reads and writes only through `arg` and the
    // extent list it names, both this guest's or unreadable.
    unsafe { guest_abi::hypercall::raw::hypercall2(12, u64::from(op) | start << 6, arg) }
}

/// A reservation call over the list at `list`.
fn call(op: u32, start: u64, list: u64, nr: u64, order: u32, flags: u32, domid: u16) -> i64 {
    let r = XenMemoryReservation {
        extent_start: list,
        nr_extents: nr,
        extent_order: order,
        mem_flags: flags,
        domid,
        _pad: [0; 6],
    };
    memop(op, start, (&raw const r) as u64)
}

/// A frame of this domain's that nothing maps or uses (a page of the
/// bootstrap pool, unmapped), to give back.
fn free_frame() -> u64 {
    let (va, mfn) = mm::alloc_page().expect("a pool page");
    // SAFETY: the pool page is ours and never used again.
    let r = unsafe { guest_abi::hypercall::update_va_mapping(va, 0, guest_abi::mmu::UVMF_INVLPG) };
    assert!(r.is_ok(), "unmap a pool page: {r:?}");
    mfn
}

/// Gives `mfn` back alone: 1 if it was still this domain's and free.
fn give_back(mfn: u64) -> i64 {
    let list = [mfn];
    call(DEC, 0, list.as_ptr() as u64, 1, 0, 0, SELF)
}

/// Prints an answer and checks it is Xen's.
fn expect(t: &mut Reporter, name: &str, got: i64, want: i64) {
    println!("memop: {name} = {got}");
    t.check(
        name,
        got == want,
        format_args!("{got}, Xen 4.17 answers {want}"),
    );
}

/// Gives back unused frames (the domain's highest pfns, which the builder
/// left unmapped and the heap, growing from below, has not reached) until
/// the domain may take `pages` more (dom0 of real Xen starts at its limit).
fn make_room(si: &StartInfo, pages: u64) {
    let me = guest_abi::types::DomId::SELF;
    let cur = guest_abi::hypercall::memory_current_reservation(me).unwrap_or(0);
    let max = guest_abi::hypercall::memory_maximum_reservation(me).unwrap_or(0);
    let mut room = max.saturating_sub(cur);
    let mut pfn = si.nr_pages;
    while room < pages && pfn > si.nr_pages / 2 {
        pfn -= 1;
        if mm::lookup(pfn * PAGE) == 0 && give_back(mm::pfn_to_mfn(pfn)) == 1 {
            room += 1;
        }
    }
    println!("memop: room for {room} pages (current {cur}, maximum {max})");
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let _ = pv_guest_kernel::traps::init();
    let domu = scenario_guests::arg(si, "role") == Some("domu");

    // The window: one mapped page, the next unmapped.
    let (_, wmfn) = mm::alloc_page().expect("a window page");
    // SAFETY: WINDOW is a fresh address of this guest's.
    let r = unsafe { mm::map_frames(WINDOW, &[wmfn], mm::PteFlags::DATA) };
    assert!(r.is_ok(), "map the window: {r:?}");
    let last = WINDOW + PAGE - 8;
    let put = |at: u64, v: u64| {
        // SAFETY: `at` is within the mapped window page.
        unsafe { core::ptr::write_volatile(at as *mut u64, v) }
    };

    // 1. An argument structure that cannot be read: the start.
    for (op, name) in [(INC, "increase"), (DEC, "decrease"), (POP, "populate")] {
        let a = memop(op, 0, NONCANONICAL);
        let b = memop(op, 3, NONCANONICAL);
        let c = memop(op, 5, WINDOW + PAGE);
        println!("memop: unreadable-struct-{name} = {a} {b} {c}");
        t.check(
            "unreadable-struct",
            (a, b, c) == (0, 3, 5),
            format_args!("{name}: {a} {b} {c}, Xen 4.17 answers 0 3 5"),
        );
    }

    // 2. The count and the start.
    let f = free_frame();
    let list = [f];
    let l = list.as_ptr() as u64;
    expect(
        &mut t,
        "count-too-large",
        call(DEC, 0, l, 0x400_0000, 0, 0, SELF),
        0,
    );
    expect(
        &mut t,
        "count-too-large-start",
        call(DEC, 2, l, u64::MAX, 0, 0, SELF),
        2,
    );
    expect(&mut t, "start-past-end", call(DEC, 5, l, 2, 0, 0, SELF), 5);
    expect(&mut t, "start-at-end", call(DEC, 1, l, 1, 0, 0, SELF), 1);
    expect(&mut t, "empty-list", call(DEC, 0, l, 0, 0, 0, SELF), 0);

    // 3. A domain that does not exist.
    expect(
        &mut t,
        "no-such-domain",
        call(DEC, 0, l, 1, 0, 0, 0x7000),
        0,
    );
    expect(
        &mut t,
        "no-such-domain-start",
        call(DEC, 1, l, 3, 0, 0, 0x7000),
        1,
    );
    expect(&mut t, "domid-invalid", call(DEC, 0, l, 1, 0, 0, 0x7FF4), 0);

    // 4. An address width no frame fits below.
    expect(
        &mut t,
        "address-bits-12",
        call(DEC, 0, l, 1, 0, 12, SELF),
        0,
    );
    expect(&mut t, "address-bits-1", call(DEC, 0, l, 1, 0, 1, SELF), 0);
    // The frame was left alone by all of the above.
    expect(&mut t, "untouched-then-given-back", give_back(f), 1);

    // 5. The order, against the caller's maximum.
    let f = free_frame();
    let list = [f];
    let l = list.as_ptr() as u64;
    expect(&mut t, "order-19", call(DEC, 0, l, 1, 19, 0, SELF), 0);
    expect(&mut t, "order-31", call(DEC, 0, l, 1, 31, 0, SELF), 0);
    if domu {
        expect(&mut t, "order-10-guest", call(DEC, 0, l, 1, 10, 0, SELF), 0);
        let mut pfn = [0x10_0000u64];
        let p = pfn.as_mut_ptr() as u64;
        expect(
            &mut t,
            "order-10-guest-populate",
            call(POP, 0, p, 1, 10, 0, SELF),
            0,
        );
        expect(
            &mut t,
            "order-10-guest-increase",
            call(INC, 0, p, 1, 10, 0, SELF),
            0,
        );
    }
    expect(&mut t, "order-refused-untouched", give_back(f), 1);
    // An order the caller may use: a populated extent given back whole.
    let (order, name) = if domu {
        (9, "order-9-guest")
    } else {
        (10, "order-10-privileged")
    };
    make_room(si, (1 << order) + 8);
    let mut ext = [0x10_0000u64];
    let p = ext.as_mut_ptr() as u64;
    expect(&mut t, name, call(POP, 0, p, 1, order, 0, SELF), 1);
    let first = ext[0];
    let back = call(DEC, 0, p, 1, order, 0, SELF);
    expect(&mut t, "whole-extent-given-back", back, 1);
    println!("memop: extent of 2^{order} at mfn {first:#x}");

    // 6. Another domain, for an unprivileged caller (dom0 here).
    if domu {
        let f = free_frame();
        let list = [f];
        let l = list.as_ptr() as u64;
        expect(&mut t, "other-domain-guest", call(DEC, 0, l, 1, 0, 0, 0), 0);
        expect(
            &mut t,
            "other-domain-guest-start",
            call(DEC, 2, l, 4, 0, 0, 0),
            2,
        );
        expect(&mut t, "other-domain-untouched", give_back(f), 1);
    }

    // 7. Extent slots that cannot be read or written end the call.
    for (op, name) in [(INC, "increase"), (DEC, "decrease"), (POP, "populate")] {
        let a = call(op, 0, NONCANONICAL, 2, 0, 0, SELF);
        let b = call(op, 1, last, 3, 0, 0, SELF);
        println!("memop: slot-fault-first-{name} = {a} {b}");
        t.check(
            "slot-fault-first",
            (a, b) == (0, 1),
            format_args!("{name}: {a} {b}, Xen 4.17 answers 0 1"),
        );
    }
    // The list's first slot is the window's last word, the next ones
    // unreadable: one extent done.
    put(last, free_frame());
    expect(
        &mut t,
        "slot-fault-decrease",
        call(DEC, 0, last, 3, 0, 0, SELF),
        1,
    );
    put(last, 0x10_0000);
    expect(
        &mut t,
        "slot-fault-populate",
        call(POP, 0, last, 3, 0, 0, SELF),
        1,
    );
    let got = call(INC, 0, last, 3, 0, 0, SELF);
    expect(&mut t, "slot-fault-increase", got, 1);

    // 8. A continued call runs from its start and counts what came before.
    let (a, b, c) = (free_frame(), free_frame(), free_frame());
    let list = [a, b, c];
    let l = list.as_ptr() as u64;
    expect(&mut t, "continued", call(DEC, 2, l, 3, 0, 0, SELF), 3);
    expect(&mut t, "continued-skipped-first", give_back(a), 1);
    expect(&mut t, "continued-skipped-second", give_back(b), 1);
    expect(&mut t, "continued-gave-back-third", give_back(c), 0);

    if let Some(peer) = scenario_guests::arg(si, "peer").and_then(|v| v.parse::<u16>().ok()) {
        other_domain(&mut t, peer);
    }

    println!("memop: done");
    t.finish()
}

/// `current_reservation` (3) or `maximum_reservation` (4) of `dom`.
fn stat(op: u32, dom: u16) -> i64 {
    let d = dom;
    memop(op, 0, (&raw const d) as u64)
}

/// A privileged caller's reservation calls naming domain `peer` (Xen's
/// toolstack builds and balloons domains this way).
fn other_domain(t: &mut Reporter, peer: u16) {
    const CUR: u32 = guest_abi::memory::XENMEM_CURRENT_RESERVATION;
    const MAX: u32 = guest_abi::memory::XENMEM_MAXIMUM_RESERVATION;
    let c0 = stat(CUR, peer);
    let room = stat(MAX, peer) - c0;
    let my_room = stat(MAX, SELF) - stat(CUR, SELF);
    println!("memop: peer {peer}: {c0} pages, room for {room}; mine {my_room}");
    // Two frames for the peer; their numbers come back in our list.
    let mut list = [0u64; 2];
    let got = call(INC, 0, list.as_mut_ptr() as u64, 2, 0, 0, peer);
    expect(t, "other-domain-increase", got, 2);
    expect(t, "other-domain-counted", stat(CUR, peer), c0 + 2);
    // They are the peer's, not ours.
    let mine = [list[0]];
    expect(
        t,
        "other-domain-frames-not-mine",
        call(DEC, 0, mine.as_ptr() as u64, 1, 0, 0, SELF),
        0,
    );
    // One of ours is not the peer's.
    let f = free_frame();
    let theirs = [f];
    expect(
        t,
        "other-domain-refuses-my-frame",
        call(DEC, 0, theirs.as_ptr() as u64, 1, 0, 0, peer),
        0,
    );
    expect(t, "other-domain-my-frame-untouched", give_back(f), 1);
    // Taken back from the peer.
    expect(
        t,
        "other-domain-decrease",
        call(DEC, 0, list.as_ptr() as u64, 2, 0, 0, peer),
        2,
    );
    expect(t, "other-domain-uncounted", stat(CUR, peer), c0);
    // populate_physmap: a pfn in, the frame's number out.
    let mut pop = [0x2_0000u64];
    expect(
        t,
        "other-domain-populate",
        call(POP, 0, pop.as_mut_ptr() as u64, 1, 0, 0, peer),
        1,
    );
    expect(
        t,
        "other-domain-populated-given-back",
        call(DEC, 0, pop.as_ptr() as u64, 1, 0, 0, peer),
        1,
    );
    // The limit is the peer's: the smallest extent beyond its room is
    // refused although it fits ours; the largest within it is taken, at an
    // order above a guest's 9 (the order limit is the caller's).
    let over = (0..=18u32).find(|&k| (1i64 << k) > room).unwrap_or(18);
    t.check(
        "other-domain-rooms",
        over >= 11 && (1i64 << over) <= my_room,
        format_args!("peer room {room}, mine {my_room}: the scenario's maxmem should leave the peer 1024 to 2047 frames and the caller more"),
    );
    let mut big = [0u64];
    expect(
        t,
        "other-domain-over-its-limit",
        call(INC, 0, big.as_mut_ptr() as u64, 1, over, 0, peer),
        0,
    );
    expect(
        t,
        "other-domain-order-above-9",
        call(INC, 0, big.as_mut_ptr() as u64, 1, over - 1, 0, peer),
        1,
    );
    expect(
        t,
        "other-domain-grown",
        stat(CUR, peer),
        c0 + (1i64 << (over - 1)),
    );
    expect(
        t,
        "other-domain-shrunk",
        call(DEC, 0, big.as_ptr() as u64, 1, over - 1, 0, peer),
        1,
    );
    expect(t, "other-domain-back", stat(CUR, peer), c0);
}

pv_guest_kernel::main!(main);
