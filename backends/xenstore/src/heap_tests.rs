//! The heap gate, checked (see [`crate::heap`]).
//!
//! The test binary's allocator counts what each thread allocates, the way
//! the bounds do (each allocation at its size rounded up to 8, at least 16;
//! every allocation, even one freed again). Code run under [`checked`]
//! starts with a budget of nothing; each time the core asks the gate
//! ([`gate`]) and is told yes, the budget becomes what it asked for (or
//! what was left, if more). An allocation past the budget is recorded and
//! fails the test: some allocation was not covered by a gate answer given
//! before it, i.e. a bound is wrong or a path allocates without asking.
//!
//! [`Bench`] installs this gate and runs every request through [`checked`],
//! so every host test that drives the store through it (the unit tests,
//! the exhaustion tests, the model-based property test) checks the bounds
//! too. The tests below add the hostile shapes the bounds must cover, and
//! what the core does when the gate says no.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::format;
use std::string::String;
use std::vec::Vec;

use guest_abi::io::xenstore::*;
use guest_abi::{DomId, Errno};
use proptest::prelude::*;

use crate::service::{INPUT_BOUND, PRE_BOUND};
use crate::tests::{Bench, nul};
use crate::{ConnId, HandleError, Hold, Limits, wire};

struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static USED: Cell<usize> = const { Cell::new(0) };
    static BUDGET: Cell<usize> = const { Cell::new(0) };
    /// First overrun: (allocation size, counted since the last yes, budget).
    static OVERRUN: Cell<Option<(usize, usize, usize)>> = const { Cell::new(None) };
    /// What the pretend heap can give (need + keep); unlimited by default.
    static ROOM: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// An allocation as the service's heap counts it.
fn counted(size: usize) -> usize {
    size.max(16).next_multiple_of(8)
}

fn note(size: usize) {
    let _ = TRACK.try_with(|t| {
        if !t.get() {
            return;
        }
        let used = USED.get().saturating_add(counted(size));
        USED.set(used);
        if used > BUDGET.get() && OVERRUN.get().is_none() {
            OVERRUN.set(Some((size, used, BUDGET.get())));
        }
    });
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counting only touches const-initialised thread-locals (no allocation).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The gate the tests install: yes while `need + keep` fits the pretend
/// heap ([`set_room`]); a yes renews the budget of the code being checked.
pub(crate) fn gate(need: usize, keep: usize) -> bool {
    let yes = need.saturating_add(keep) <= ROOM.get();
    if yes && TRACK.get() {
        let left = BUDGET.get().saturating_sub(USED.get());
        BUDGET.set(need.max(left));
        USED.set(0);
    }
    yes
}

/// Let the pretend heap give `n` bytes from now on (`usize::MAX`: any).
pub(crate) fn set_room(n: usize) {
    ROOM.set(n);
}

/// Run `f` with its allocations counted against the gate's answers; panics
/// (failing the test) on any allocation no answer covered.
pub(crate) fn checked<R>(f: impl FnOnce() -> R) -> R {
    USED.set(0);
    BUDGET.set(0);
    OVERRUN.set(None);
    TRACK.set(true);
    let r = f();
    TRACK.set(false);
    if let Some((size, used, budget)) = OVERRUN.take() {
        panic!(
            "an allocation of {size} bytes was not covered by the heap gate: {used} bytes counted against a budget of {budget}"
        );
    }
    r
}

fn err(e: Errno) -> Result<Vec<u8>, String> {
    Err(String::from(e.name().unwrap()))
}

fn ok() -> Result<Vec<u8>, String> {
    Ok(b"OK\0".to_vec())
}

fn write_req(p: &str, v: &[u8]) -> Vec<u8> {
    [nul(p), v.to_vec()].concat()
}

/// A bench whose pretend heap is unlimited again when it is dropped, so a
/// failing test does not leave a small heap to the next test on its thread.
struct Restore;
impl Drop for Restore {
    fn drop(&mut self) {
        set_room(usize::MAX);
    }
}

// ---- the bounds hold for hostile shapes ---------------------------------------

/// Wide directories, long values and paths, many permissions, nodes shared
/// with open transactions, big removals and commits: every request's
/// allocations stay within what the gate was asked for (Bench checks each).
#[test]
fn bounds_cover_wide_deep_and_shared_nodes() {
    let mut b = Bench::new();
    let g = b.guest(1);
    let d0 = b.dom0;
    // A directory with many children and long names, made by dom0 (no
    // node-size quota), writable by the guest.
    for i in 0..300 {
        b.write(d0, &format!("/wide/child-with-a-long-name-{i:04}"), "v")
            .unwrap();
    }
    b.set_perms(d0, "/wide", &["n0", "b1"]).unwrap();
    let many: Vec<String> = (0..600).map(|i| format!("r{}", 2 + i)).collect();
    let mut perms: Vec<&str> = vec!["n0"];
    perms.extend(many.iter().map(String::as_str));
    b.set_perms(d0, "/wide/child-with-a-long-name-0001", &perms)
        .unwrap();
    // Too big a parent for a guest (ENOSPC), then a middle-sized one.
    b.write(g, "/wide/new", "x").unwrap_err();
    for i in 0..40 {
        b.write(d0, &format!("/wide/mid/c{i:02}"), "v").unwrap();
    }
    b.set_perms(d0, "/wide/mid", &["n0", "b1"]).unwrap();
    b.write(g, "/wide/mid/new", "x").unwrap();
    // Open transactions share every node with the shared store.
    let t0 = b.tx_start(d0);
    let t1 = b.tx_start(g);
    b.write(g, "/wide/child-with-a-long-name-0001", "y")
        .unwrap_err();
    b.write(d0, "/wide/child-with-a-long-name-0002", &"z".repeat(4000))
        .unwrap();
    b.read(d0, "/wide/child-with-a-long-name-0002").unwrap();
    b.dir(d0, "/wide").unwrap_err();
    let mut part = nul("/wide");
    part.extend(nul("100"));
    b.req(d0, XS_DIRECTORY_PART, 0, &part).unwrap();
    b.get_perms(d0, "/wide/child-with-a-long-name-0001")
        .unwrap();
    // Deep creation in a transaction and outside.
    let deep: String = (0..40)
        .map(|i| format!("level{i}"))
        .collect::<Vec<_>>()
        .join("/");
    b.write_tx(g, t1, &format!("/wide/mid/{deep}"), "v")
        .unwrap();
    b.tx_end(g, t1, true).unwrap();
    b.write(g, &format!("/wide/mid/x/{deep}"), "v").unwrap();
    b.write_tx(d0, t0, "/wide/child-with-a-long-name-0003", "t")
        .unwrap();
    b.rm_tx(d0, t0, "/wide").unwrap();
    b.tx_end(d0, t0, true).unwrap_err();
    // Watches everywhere, then a removal that fires them all.
    for i in 0..100 {
        b.watch(
            g,
            &format!("/wide/child-with-a-long-name-{i:04}"),
            &format!("token-{i}"),
        )
        .unwrap();
    }
    b.watch(d0, "/wide", "all").unwrap();
    let t2 = b.tx_start(g);
    b.rm(d0, "/wide").unwrap();
    b.tx_end(g, t2, false).unwrap();
    b.xs.store().check().unwrap();
    // Releasing the guest rewrites every node naming it.
    b.write(g, "a/b", "c").unwrap();
    let t3 = b.tx_start(d0);
    checked(|| b.xs.release(DomId(1))).unwrap();
    b.tx_end(d0, t3, false).unwrap();
}

/// The ring path: bytes fed in pieces are reassembled and handled within
/// what the gate was asked for.
#[test]
fn feeding_a_ring_stays_within_the_gate() {
    let mut b = Bench::new();
    let g = b.guest(1);
    let mut stream = Vec::new();
    for i in 0..30u32 {
        stream.extend(wire::encode(
            XS_WRITE,
            i,
            0,
            &write_req(&format!("n{i}"), &[b'v'; 2000]),
        ));
        stream.extend(wire::encode(XS_READ, i, 0, &nul(&format!("n{i}"))));
    }
    let mut at = 0;
    while at < stream.len() {
        let end = (at + 1024).min(stream.len());
        let fed = checked(|| b.xs.feed(g, &stream[at..end])).unwrap();
        at += fed.consumed;
        while b.xs.pop_output(g).is_some() {}
    }
}

/// A request from the generated mix, sent by one of three clients.
fn hostile_request() -> impl Strategy<Value = (usize, u32, bool, Vec<u8>)> {
    let path = prop::sample::select(vec![
        "a",
        "a/b",
        "a/b/c",
        "/wide",
        "/wide/k",
        "@releaseDomain",
        "/local/domain/1",
        "/",
    ]);
    let value = prop_oneof![Just(0usize), 1usize..64, Just(2000), Just(4000)];
    (
        0usize..3,
        prop::sample::select(vec![
            XS_READ,
            XS_WRITE,
            XS_MKDIR,
            XS_RM,
            XS_DIRECTORY,
            XS_DIRECTORY_PART,
            XS_GET_PERMS,
            XS_SET_PERMS,
            XS_WATCH,
            XS_UNWATCH,
            XS_TRANSACTION_START,
            XS_TRANSACTION_END,
            XS_RELEASE,
            XS_INTRODUCE,
            XS_RESET_WATCHES,
        ]),
        any::<bool>(),
        (path, value, 0usize..20),
    )
        .prop_map(|(who, ty, in_tx, (p, v, n))| {
            let payload = match ty {
                XS_WRITE => write_req(p, &std::vec![b'x'; v]),
                XS_DIRECTORY_PART => [nul(p), nul(&format!("{n}"))].concat(),
                XS_SET_PERMS => {
                    let mut out = nul(p);
                    out.extend(nul("n1"));
                    for i in 0..n * 3 {
                        out.extend(nul(&format!("r{}", i + 2)));
                    }
                    out
                }
                XS_WATCH | XS_UNWATCH => [nul(p), nul(&"t".repeat(n + 1))].concat(),
                XS_TRANSACTION_END => nul(if n % 2 == 0 { "T" } else { "F" }),
                XS_RELEASE => nul("2"),
                XS_INTRODUCE => [nul("2"), nul("4096"), nul("7")].concat(),
                _ => nul(p),
            };
            (who, ty, in_tx, payload)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz::cases(64)))]

    /// Random request mixes from dom0 and two guests, in and out of
    /// transactions: every allocation is covered by a gate answer.
    #[test]
    fn every_allocation_is_covered_by_the_gate(reqs in prop::collection::vec(hostile_request(), 1..60)) {
        let mut b = Bench::new();
        let g1 = b.guest(1);
        let g2 = b.guest(2);
        for i in 0..40 {
            b.write(b.dom0, &format!("/wide/k{i}"), "v").unwrap();
        }
        b.set_perms(b.dom0, "/wide", &["n0", "b1", "b2"]).unwrap();
        let senders = [b.dom0, g1, g2];
        let mut txs: Vec<(ConnId, u32)> = Vec::new();
        for (i, (who, ty, in_tx, payload)) in reqs.iter().enumerate() {
            let c = senders[*who];
            let tx = if *in_tx || *ty == XS_TRANSACTION_END {
                txs.iter().rev().find(|(o, _)| *o == c).map_or(0, |t| t.1)
            } else {
                0
            };
            let msg = wire::encode(*ty, i as u32, tx, payload);
            match checked(|| b.xs.handle(c, &msg)) {
                Ok(()) | Err(HandleError::UnknownConnection) => {}
                Err(e) => prop_assert!(false, "{e:?}"),
            }
            while let Some(m) = b.xs.pop_output(c) {
                let parsed = wire::parse(&m).unwrap();
                if *ty == XS_TRANSACTION_START && parsed.header.type_ == XS_TRANSACTION_START {
                    let id: u32 = core::str::from_utf8(&parsed.payload[..parsed.payload.len() - 1]).unwrap().parse().unwrap();
                    txs.push((c, id));
                }
            }
            for other in b.xs.connections().map(|c| c.id()).collect::<Vec<_>>() {
                while b.xs.pop_output(other).is_some() {}
            }
            b.xs.take_actions();
        }
        prop_assert!(b.xs.store().check().is_ok());
    }
}

// ---- when the gate says no ----------------------------------------------------

/// With room to read and answer but not to run anything that grows the
/// store, a guest's write, mkdir, watch and transaction start are each
/// answered `ENOMEM` and change nothing; with room again, the same
/// requests succeed.
#[test]
fn no_room_answers_enomem_and_changes_nothing() {
    let _r = Restore;
    let limits = Limits::default();
    let mut b = Bench::new();
    let g = b.guest(1);
    b.write(g, "kept", "1").unwrap();
    let before: Vec<String> = b.xs.store().paths().map(String::from).collect();
    // Enough to answer, short of any request's own bound.
    set_room(PRE_BOUND + 2048 + limits.heap_reserve);
    assert_eq!(
        b.req(g, XS_WRITE, 0, &write_req("new", b"v")),
        err(Errno::ENOMEM)
    );
    assert_eq!(
        b.req(g, XS_WRITE, 0, &write_req("kept", b"2")),
        err(Errno::ENOMEM)
    );
    assert_eq!(b.req(g, XS_MKDIR, 0, &nul("dir")), err(Errno::ENOMEM));
    assert_eq!(
        b.req(g, XS_WATCH, 0, &[nul("kept"), nul("tok")].concat()),
        err(Errno::ENOMEM)
    );
    assert_eq!(b.req(g, XS_TRANSACTION_START, 0, b"\0"), err(Errno::ENOMEM));
    let after: Vec<String> = b.xs.store().paths().map(String::from).collect();
    assert_eq!(before, after, "nothing changed");
    assert_eq!(
        b.read(g, "kept"),
        Err(String::from("ENOMEM")),
        "even a read needs its bound"
    );
    let c = b.xs.connection(g).unwrap();
    assert_eq!((c.watch_count(), c.transaction_count()), (0, 0));
    assert_eq!(c.heap_refusals(), 6);
    b.xs.store().check().unwrap();
    // dom0 needs no reserve: served where the guest is not.
    set_room(64 * 1024);
    b.write(b.dom0, "/dom0-node", "v").unwrap();
    // Room again: everything works.
    set_room(usize::MAX);
    assert_eq!(b.req(g, XS_WRITE, 0, &write_req("new", b"v")), ok());
    b.mkdir(g, "dir").unwrap();
    b.watch(g, "kept", "tok").unwrap();
    let t = b.tx_start(g);
    b.write_tx(g, t, "in-tx", "v").unwrap();
    b.tx_end(g, t, true).unwrap();
    assert_eq!(b.read(g, "kept").unwrap(), "1");
    b.xs.store().check().unwrap();
}

/// With no room even to answer, a guest's ring is not read: `feed` takes
/// nothing and [`Xenstore::hold`] says why; with room again the same bytes
/// are taken and answered.
#[test]
fn no_room_to_answer_holds_the_ring() {
    let _r = Restore;
    let mut b = Bench::new();
    let g = b.guest(1);
    let req = wire::encode(XS_WRITE, 7, 0, &write_req("x", b"v"));
    set_room(INPUT_BOUND);
    assert_eq!(b.xs.hold(g), Some(Hold::Heap));
    assert!(!b.xs.accepts_input(g));
    assert_eq!(checked(|| b.xs.feed(g, &req)).unwrap().consumed, 0);
    assert_eq!(checked(|| b.xs.receive(g, &req)), Ok(0));
    assert!(
        b.xs.pop_output(g).is_none(),
        "nothing answered, nothing dropped"
    );
    assert_eq!(b.xs.handle(g, &req), Err(HandleError::NoMemory));
    assert!(b.xs.store().get("/local/domain/1/x").is_none());
    set_room(usize::MAX);
    assert_eq!(b.xs.hold(g), None);
    let fed = checked(|| b.xs.feed(g, &req)).unwrap();
    assert_eq!((fed.consumed, fed.handled), (req.len(), 1));
    let reply = b.xs.pop_output(g).unwrap();
    assert_eq!(wire::parse(&reply).unwrap().payload, b"OK\0");
}

/// A domain that holds more than the light threshold must leave the light
/// reserve too: at the same heap, a flooding guest is refused while a
/// light one is still served.
#[test]
fn light_clients_keep_the_light_reserve() {
    let _r = Restore;
    let limits = Limits::default();
    let mut b = Bench::new();
    let heavy = b.guest(1);
    let light = b.guest(2);
    for i in 0..60 {
        b.write(heavy, &format!("n{i}"), &"v".repeat(1500)).unwrap();
    }
    assert!(b.xs.memory_used(heavy).unwrap() > limits.light_usage);
    set_room(limits.heap_reserve + limits.heap_reserve_light / 2);
    assert_eq!(b.xs.hold(heavy), Some(Hold::Heap));
    assert_eq!(b.xs.hold(light), None);
    let more = wire::encode(XS_WRITE, 1, 0, &write_req("more", b"v"));
    assert_eq!(checked(|| b.xs.feed(heavy, &more)).unwrap().consumed, 0);
    assert_eq!(b.xs.handle(heavy, &more), Err(HandleError::NoMemory));
    assert_eq!(b.req(light, XS_WRITE, 0, &write_req("mine", b"v")), ok());
    assert_eq!(b.read(light, "mine").unwrap(), "v");
}

/// A watcher the heap has no room for loses the event (as past its
/// quotas); the change itself still happens and others still hear of it.
#[test]
fn events_the_heap_cannot_hold_are_dropped() {
    let _r = Restore;
    let limits = Limits::default();
    let mut b = Bench::new();
    let heavy = b.guest(1);
    let light = b.guest(2);
    b.write(b.dom0, "/shared", "0").unwrap();
    b.set_perms(b.dom0, "/shared", &["n0", "r1", "r2"]).unwrap();
    b.watch(heavy, "/shared", "h").unwrap();
    b.watch(light, "/shared", "l").unwrap();
    b.events(heavy);
    b.events(light);
    for i in 0..60 {
        b.write(heavy, &format!("n{i}"), &"v".repeat(1500)).unwrap();
    }
    set_room(limits.heap_reserve + limits.heap_reserve_light / 2);
    b.write(b.dom0, "/shared", "1").unwrap();
    assert!(b.events(heavy).is_empty(), "dropped for the heavy watcher");
    assert_eq!(b.events(light).len(), 1);
    assert_eq!(b.read(b.dom0, "/shared").unwrap(), "1");
}

/// Releasing a domain whose nodes are shared with a transaction needs
/// room to copy them: without it the release is refused whole (`ENOMEM`)
/// and can be retried.
#[test]
fn release_waits_for_room() {
    let _r = Restore;
    let mut b = Bench::new();
    let g = b.guest(1);
    for i in 0..50 {
        b.write(g, &format!("n{i}"), "v").unwrap();
    }
    let t = b.tx_start(b.dom0);
    set_room(1024);
    assert_eq!(checked(|| b.xs.release(DomId(1))), Err(Errno::ENOMEM));
    assert!(b.xs.domain_connection(DomId(1)).is_some());
    set_room(usize::MAX);
    checked(|| b.xs.release(DomId(1))).unwrap();
    assert_eq!(b.xs.store().owned_by(1), 0);
    b.tx_end(b.dom0, t, false).unwrap();
}
