//! Host tests of the FIFO ABI: Xen's argument checks, linking, priorities,
//! masking, the event-array growth, the switch back to 2-level, and a
//! property test against a Linux-like consumer.

use super::tests::{FakeBits, World, connect};
use super::*;
use guest_abi::event_channel::{
    EVTCHN_FIFO_LINK_MASK, EVTCHN_FIFO_LINKED, EVTCHN_FIFO_MASKED, EVTCHN_FIFO_PENDING,
    EVTCHN_FIFO_PRIORITY_DEFAULT,
};
use proptest::prelude::*;

const PENDING: u32 = 1 << EVTCHN_FIFO_PENDING;
const MASKED: u32 = 1 << EVTCHN_FIFO_MASKED;
const LINKED: u32 = 1 << EVTCHN_FIFO_LINKED;
const BUSY: u32 = 1 << guest_abi::event_channel::EVTCHN_FIFO_BUSY;
/// Control block frame of vCPU `v` is `CB + v`, at offset `CB_OFF`.
const CB: u64 = 0x10;
const CB_OFF: u32 = 64;
/// Event-array page `i` is frame `ARRAY + i`.
const ARRAY: u64 = 0x100;

fn ok(_: u64) -> Result<(), Errno> {
    Ok(())
}

/// Domain `dom` switches to FIFO with a control block on each of its
/// `vcpus` and `pages` event-array pages.
fn setup(w: &mut World, dom: u16, vcpus: u32, pages: u64) {
    for v in 0..vcpus {
        init_control(w, dom, v, CB + u64::from(v), CB_OFF, ok).unwrap();
    }
    for i in 0..pages {
        expand_array(w, dom, ARRAY + i, ok).unwrap();
    }
}

fn word_loc(port: u32) -> (u64, u32) {
    (ARRAY + u64::from(port / 1024), (port % 1024) * 4)
}

fn word(w: &World, dom: u16, port: u32) -> u32 {
    let (m, o) = word_loc(port);
    w.dom(dom).bits.word(m, o)
}

fn set_word(w: &mut World, dom: u16, port: u32, f: impl FnOnce(u32) -> u32) {
    let (m, o) = word_loc(port);
    let x = w.bits(dom).word_mut(m, o);
    *x = f(*x);
}

fn ready(w: &World, dom: u16, vcpu: u32) -> u32 {
    w.dom(dom).bits.word(CB + u64::from(vcpu), CB_OFF)
}

fn head(w: &World, dom: u16, vcpu: u32, q: u32) -> u32 {
    w.dom(dom)
        .bits
        .word(CB + u64::from(vcpu), CB_OFF + 8 + 4 * q)
}

/// A Linux-like consumer (`__evtchn_fifo_handle_events`): its own head per
/// queue, taking READY with an exchange, always the highest-priority ready
/// queue first; each event is unlinked, and handled (PENDING cleared) if
/// pending and unmasked.
#[derive(Default)]
struct Guest {
    heads: [[u32; 16]; 2],
}

impl Guest {
    fn drain(&mut self, w: &mut World, dom: u16, vcpu: u32) -> Vec<u32> {
        let cb = CB + u64::from(vcpu);
        let mut seen = Vec::new();
        w.bits(dom).upcall[vcpu as usize] = false;
        let take_ready = |w: &mut World| std::mem::take(w.bits(dom).word_mut(cb, CB_OFF));
        let mut ready = take_ready(w);
        let mut steps = 0;
        while ready != 0 {
            steps += 1;
            assert!(steps < 100_000, "queue cycle");
            let q = ready.trailing_zeros();
            let mut port = self.heads[vcpu as usize][q as usize];
            if port == 0 {
                port = head(w, dom, vcpu, q);
            }
            assert!(port != 0 && port < NR_PORTS, "bad head {port} on queue {q}");
            let (m, o) = word_loc(port);
            let old = w.dom(dom).bits.word(m, o);
            assert!(old & LINKED != 0, "consumed an unlinked port {port}");
            let mut new = old & !(LINKED | EVTCHN_FIFO_LINK_MASK);
            let link = old & EVTCHN_FIFO_LINK_MASK;
            if link == 0 {
                ready &= !(1 << q);
            }
            if old & PENDING != 0 && old & MASKED == 0 {
                seen.push(port);
                new &= !PENDING;
            }
            *w.bits(dom).word_mut(m, o) = new;
            self.heads[vcpu as usize][q as usize] = link;
            ready |= take_ready(w);
        }
        seen
    }
}

#[test]
fn fifo_init_control_checks_in_xen_order() {
    let mut w = World::new(&[1, 2]);
    let never = |_: u64| -> Result<(), Errno> { panic!("frame taken before the checks") };
    // Bad vCPU first (ENOENT), even with a bad offset.
    assert_eq!(init_control(&mut w, 1, 2, CB, 0, never), Err(Errno::ENOENT));
    assert_eq!(
        init_control(&mut w, 1, u32::MAX, CB, 7, never),
        Err(Errno::ENOENT)
    );
    // The block must fit in the page, 8-byte aligned.
    for off in [4096 - 72 + 8, 4096, u32::MAX, 4, 12, 4092] {
        assert_eq!(
            init_control(&mut w, 1, 0, CB, off, never),
            Err(Errno::EINVAL),
            "offset {off}"
        );
    }
    // The frame refused: nothing changes.
    assert_eq!(
        init_control(&mut w, 1, 0, CB, 0, |_| Err(Errno::EINVAL)),
        Err(Errno::EINVAL)
    );
    assert!(!w.dom(1).chans.fifo().is_active());
    // The last offset that fits.
    let mut taken = Vec::new();
    init_control(&mut w, 1, 1, CB, 4096 - 72, |m| {
        taken.push(m);
        Ok(())
    })
    .unwrap();
    assert_eq!(taken, [CB]);
    assert!(w.dom(1).chans.fifo().is_active());
    assert!(w.dom(1).chans.fifo().has_control(1));
    assert!(!w.dom(1).chans.fifo().has_control(0));
    // Once per vCPU.
    assert_eq!(
        init_control(&mut w, 1, 1, CB + 1, 0, never),
        Err(Errno::EINVAL)
    );
    init_control(&mut w, 1, 0, CB + 1, 0, ok).unwrap();
    assert_eq!(
        init_control(&mut w, 1, 0, CB + 1, 0, never),
        Err(Errno::EINVAL)
    );
    // Another domain is untouched.
    assert!(!w.dom(0).chans.fifo().is_active());
}

#[test]
fn fifo_expand_array_checks_and_limit() {
    let mut w = World::new(&[1]);
    assert_eq!(expand_array(&mut w, 0, ARRAY, ok), Err(Errno::EOPNOTSUPP));
    init_control(&mut w, 0, 0, CB, 0, ok).unwrap();
    assert_eq!(
        expand_array(&mut w, 0, ARRAY, |_| Err(Errno::EINVAL)),
        Err(Errno::EINVAL)
    );
    assert_eq!(w.dom(0).chans.fifo().nr_pages(), 0);
    for i in 0..MAX_ARRAY_PAGES as u64 {
        expand_array(&mut w, 0, ARRAY + i, ok).unwrap();
    }
    assert_eq!(w.dom(0).chans.fifo().nr_pages(), 128);
    let never = |_: u64| -> Result<(), Errno> { panic!("frame taken past the limit") };
    assert_eq!(expand_array(&mut w, 0, ARRAY, never), Err(Errno::ENOSPC));
    // Every frame is reported once, for the references to go.
    let frames: Vec<u64> = w.dom(0).chans.fifo().frames().collect();
    assert_eq!(frames.len(), 129);
    assert_eq!(frames[0], CB);
    assert_eq!(frames[128], ARRAY + 127);
}

#[test]
fn fifo_set_priority_checks() {
    let mut w = World::new(&[1]);
    let p = bind_ipi(&mut w, 0, 0).unwrap();
    assert_eq!(set_priority(&mut w, 0, p, 3), Err(Errno::ENOSYS));
    assert_eq!(set_priority(&mut w, 0, NR_PORTS, 3), Err(Errno::EINVAL));
    setup(&mut w, 0, 1, 1);
    assert_eq!(w.dom(0).chans.fifo().priority(p), 7);
    assert_eq!(set_priority(&mut w, 0, p, 16), Err(Errno::EINVAL));
    assert_eq!(set_priority(&mut w, 0, p, u32::MAX), Err(Errno::EINVAL));
    assert_eq!(set_priority(&mut w, 0, NR_PORTS, 3), Err(Errno::EINVAL));
    set_priority(&mut w, 0, p, 15).unwrap();
    set_priority(&mut w, 0, p, 0).unwrap();
    assert_eq!(w.dom(0).chans.fifo().priority(p), 0);
    // A port bound again starts at the default priority.
    close(&mut w, 0, p).unwrap();
    let q = bind_ipi(&mut w, 0, 0).unwrap();
    assert_eq!(q, p);
    assert_eq!(
        w.dom(0).chans.fifo().priority(q),
        EVTCHN_FIFO_PRIORITY_DEFAULT
    );
}

#[test]
fn fifo_send_links_in_order_and_raises_upcall_once() {
    let mut w = World::new(&[1]);
    setup(&mut w, 0, 1, 1);
    let ports: Vec<u32> = (0..3).map(|_| bind_ipi(&mut w, 0, 0).unwrap()).collect();
    let k = send(&mut w, 0, ports[1]).unwrap().unwrap();
    assert!(k.upcall);
    assert_eq!(head(&w, 0, 0, 7), ports[1]);
    assert_eq!(ready(&w, 0, 0), 1 << 7);
    assert!(w.dom(0).bits.upcall[0]);
    // The next ones are linked behind: pending, no second upcall.
    for &p in &[ports[0], ports[2]] {
        let k = send(&mut w, 0, p).unwrap().unwrap();
        assert!(!k.upcall);
    }
    assert_eq!(word(&w, 0, ports[1]) & EVTCHN_FIFO_LINK_MASK, ports[0]);
    assert_eq!(word(&w, 0, ports[0]) & EVTCHN_FIFO_LINK_MASK, ports[2]);
    assert_eq!(w.dom(0).chans.fifo().tail(0, 7), ports[2]);
    // Sending a pending, linked event again changes nothing.
    let before = word(&w, 0, ports[0]);
    assert_eq!(send(&mut w, 0, ports[0]).unwrap(), None);
    assert_eq!(word(&w, 0, ports[0]), before);
    // 2-level bits untouched.
    assert!(ports.iter().all(|&p| !w.dom(0).bits.is_pending(p)));
    let mut g = Guest::default();
    assert_eq!(g.drain(&mut w, 0, 0), [ports[1], ports[0], ports[2]]);
    // Consumed: the next event starts a new queue (head rewritten).
    let k = send(&mut w, 0, ports[2]).unwrap().unwrap();
    assert!(k.upcall);
    assert_eq!(head(&w, 0, 0, 7), ports[2]);
    assert_eq!(g.drain(&mut w, 0, 0), [ports[2]]);
}

#[test]
fn fifo_higher_priority_consumed_first() {
    let mut w = World::new(&[1]);
    setup(&mut w, 0, 1, 1);
    let low = bind_ipi(&mut w, 0, 0).unwrap();
    let mid = bind_ipi(&mut w, 0, 0).unwrap();
    let high = bind_ipi(&mut w, 0, 0).unwrap();
    set_priority(&mut w, 0, low, 12).unwrap();
    set_priority(&mut w, 0, high, 1).unwrap();
    for p in [low, mid, high] {
        send(&mut w, 0, p).unwrap();
    }
    assert_eq!(ready(&w, 0, 0), (1 << 12) | (1 << 7) | (1 << 1));
    let mut g = Guest::default();
    assert_eq!(g.drain(&mut w, 0, 0), [high, mid, low]);
}

#[test]
fn fifo_masked_event_pends_unlinked_and_unmask_relinks() {
    let mut w = World::new(&[1, 1]);
    setup(&mut w, 1, 1, 1);
    let (p0, p1) = connect(&mut w, 0, 1);
    // The binding raised p1 (Xen does so unconditionally): consume it.
    let mut g = Guest::default();
    assert_eq!(g.drain(&mut w, 1, 0), [p1]);
    set_word(&mut w, 1, p1, |x| x | MASKED);
    let k = send(&mut w, 0, p0).unwrap().unwrap();
    assert!(!k.upcall, "masked: pending only");
    assert_eq!(word(&w, 1, p1) & (PENDING | LINKED), PENDING);
    assert_eq!(ready(&w, 1, 0), 0);
    assert!(!w.dom(1).bits.upcall[0]);
    // The hypercall unmask links it and raises the upcall.
    let k = unmask(&mut w, 1, p1).unwrap().unwrap();
    assert!(k.upcall);
    assert_eq!(word(&w, 1, p1) & (MASKED | LINKED), LINKED);
    assert_eq!(g.drain(&mut w, 1, 0), [p1]);
    // Unmasking a port that is not pending does nothing else.
    set_word(&mut w, 1, p1, |x| x | MASKED);
    assert_eq!(unmask(&mut w, 1, p1).unwrap(), None);
    assert_eq!(word(&w, 1, p1), 0);
    // Polling sees FIFO pending state.
    set_word(&mut w, 1, p1, |x| x | MASKED);
    send(&mut w, 0, p0).unwrap();
    assert_eq!(any_pending(&mut w, 1, &[p1]), Ok(true));
}

#[test]
fn fifo_events_before_their_page_are_raised_when_it_is_added() {
    let mut w = World::new(&[1]);
    // Pending under 2-level before the switch.
    let a = bind_ipi(&mut w, 0, 0).unwrap();
    send(&mut w, 0, a).unwrap();
    w.bits(0).upcall[0] = false;
    init_control(&mut w, 0, 0, CB, CB_OFF, ok).unwrap();
    // No event word yet: not pending, and a send is remembered.
    let b = bind_ipi(&mut w, 0, 0).unwrap();
    assert_eq!(send(&mut w, 0, b).unwrap(), None);
    assert_eq!(any_pending(&mut w, 0, &[a, b]), Ok(false));
    assert!(w.dom(0).chans.fifo().is_masked(&w.dom(0).bits, b));
    let kicks = expand_array(&mut w, 0, ARRAY, ok).unwrap();
    assert_eq!(
        kicks,
        Kicks {
            upcall: 1,
            pending: 1
        }
    );
    let mut g = Guest::default();
    assert_eq!(g.drain(&mut w, 0, 0), [a, b]);
    // A port freed meanwhile is not raised.
    let c = bind_ipi(&mut w, 0, 0).unwrap();
    let far = (0..2000)
        .map(|_| bind_ipi(&mut w, 0, 0).unwrap())
        .last()
        .unwrap();
    assert!(far >= 1024);
    send(&mut w, 0, far).unwrap();
    close(&mut w, 0, far).unwrap();
    let far2 = bind_ipi(&mut w, 0, 0).unwrap();
    assert_eq!(far2, far);
    assert_eq!(
        expand_array(&mut w, 0, ARRAY + 1, ok).unwrap(),
        Kicks::default()
    );
    let _ = c;
}

#[test]
fn fifo_vcpu_without_control_block_drops_the_event() {
    let mut w = World::new(&[2]);
    init_control(&mut w, 0, 0, CB, CB_OFF, ok).unwrap();
    expand_array(&mut w, 0, ARRAY, ok).unwrap();
    let p = bind_ipi(&mut w, 0, 1).unwrap();
    // As Xen 4.17: dropped before PENDING is set (no kick, no poll wake).
    assert_eq!(send(&mut w, 0, p), Ok(None));
    assert_eq!(word(&w, 0, p), 0);
    assert!(!w.dom(0).bits.upcall[1]);
    // Its block registered, the next event is delivered on vCPU 1.
    init_control(&mut w, 0, 1, CB + 1, CB_OFF, ok).unwrap();
    let k = send(&mut w, 0, p).unwrap().unwrap();
    assert!(k.upcall && k.vcpu == 1);
}

#[test]
fn fifo_linked_free_port_is_not_reused() {
    let mut w = World::new(&[1]);
    setup(&mut w, 0, 1, 1);
    let p = bind_ipi(&mut w, 0, 0).unwrap();
    send(&mut w, 0, p).unwrap();
    close(&mut w, 0, p).unwrap();
    // Closing clears PENDING; the event stays linked until consumed.
    assert_eq!(word(&w, 0, p) & (PENDING | LINKED), LINKED);
    let q = bind_ipi(&mut w, 0, 0).unwrap();
    assert_ne!(q, p, "a port still on a queue was handed out");
    let mut g = Guest::default();
    assert_eq!(g.drain(&mut w, 0, 0), Vec::<u32>::new());
    assert_eq!(bind_ipi(&mut w, 0, 0).unwrap(), p);
}

#[test]
fn fifo_queue_change_invalidates_stale_tail() {
    let mut w = World::new(&[1]);
    setup(&mut w, 0, 1, 1);
    let p = bind_ipi(&mut w, 0, 0).unwrap();
    let q = bind_ipi(&mut w, 0, 0).unwrap();
    send(&mut w, 0, p).unwrap();
    let mut g = Guest::default();
    assert_eq!(g.drain(&mut w, 0, 0), [p]);
    // p is still queue 7's tail for the hypervisor; it moves to queue 3.
    set_priority(&mut w, 0, p, 3).unwrap();
    send(&mut w, 0, p).unwrap();
    assert_eq!(w.dom(0).chans.fifo().tail(0, 7), 0);
    // q (queue 7) must start its own queue, not hang off p in queue 3.
    send(&mut w, 0, q).unwrap();
    assert_eq!(word(&w, 0, p) & EVTCHN_FIFO_LINK_MASK, 0);
    assert_eq!(head(&w, 0, 0, 7), q);
    assert_eq!(g.drain(&mut w, 0, 0), [p, q]);
    // Moving to another vCPU is the same.
    let mut w = World::new(&[2]);
    setup(&mut w, 0, 2, 1);
    let p = bind_ipi(&mut w, 0, 0).unwrap();
    let q = bind_ipi(&mut w, 0, 0).unwrap();
    send(&mut w, 0, p).unwrap();
    assert_eq!(Guest::default().drain(&mut w, 0, 0), [p]);
    let a = alloc_unbound(&mut w, 0, DOMID_SELF, 0, false).unwrap();
    let (b, _) = bind_interdomain(&mut w, 0, 0, a).unwrap();
    let _ = Guest::default().drain(&mut w, 0, 0);
    // An interdomain (loopback) port can move; IPIs cannot.
    bind_vcpu(&mut w, 0, b, 1).unwrap();
    send(&mut w, 0, a).unwrap();
    assert_eq!(w.dom(0).chans.fifo().tail(0, 7), 0);
    assert_eq!(w.dom(0).chans.fifo().tail(1, 7), b);
    send(&mut w, 0, q).unwrap();
    assert_eq!(head(&w, 0, 0, 7), q);
    assert_eq!(Guest::default().drain(&mut w, 0, 1), [b]);
    assert_eq!(Guest::default().drain(&mut w, 0, 0), [q]);
}

/// Words whose guest flips MASKED on every compare-exchange (a guest
/// racing the link as hard as it can).
struct Racer(FakeBits);

impl FifoWords for Racer {
    fn load(&self, mfn: u64, offset: u32) -> u32 {
        self.0.load(mfn, offset)
    }
    fn store(&mut self, mfn: u64, offset: u32, value: u32) {
        self.0.store(mfn, offset, value);
    }
    fn fetch_or(&mut self, mfn: u64, offset: u32, bits: u32) -> u32 {
        self.0.fetch_or(mfn, offset, bits)
    }
    fn fetch_and(&mut self, mfn: u64, offset: u32, bits: u32) -> u32 {
        self.0.fetch_and(mfn, offset, bits)
    }
    fn compare_exchange(&mut self, mfn: u64, offset: u32, c: u32, n: u32) -> Result<u32, u32> {
        *self.0.word_mut(mfn, offset) ^= MASKED;
        self.0.compare_exchange(mfn, offset, c, n)
    }
}

#[test]
fn fifo_set_link_is_bounded_and_releases_busy() {
    let mut r = Racer(FakeBits::new());
    r.0.store(1, 0, LINKED | PENDING);
    // Always losing the race: gives up after five attempts, BUSY cleared.
    assert!(Fifo::set_link(&mut r, 1, 0, 9));
    assert_eq!(r.0.load(1, 0) & (BUSY | EVTCHN_FIFO_LINK_MASK), 0);
    // A plain guest: linked at once, BUSY never left set.
    let mut b = FakeBits::new();
    b.store(1, 0, LINKED | BUSY | 5);
    assert!(Fifo::set_link(&mut b, 1, 0, 9));
    assert_eq!(b.load(1, 0), LINKED | 9);
    // The guest consumed the tail: not linked, word untouched.
    b.store(1, 4, PENDING);
    assert!(!Fifo::set_link(&mut b, 1, 4, 9));
    assert_eq!(b.load(1, 4), PENDING);
}

#[test]
fn fifo_destroy_and_reset_return_to_2_level() {
    let mut w = World::new(&[2, 1]);
    setup(&mut w, 0, 2, 2);
    let p = bind_ipi(&mut w, 0, 0).unwrap();
    send(&mut w, 0, p).unwrap();
    reset(&mut w, 0, DOMID_SELF, false, false, || false).unwrap();
    assert_eq!(word(&w, 0, p) & PENDING, 0, "closing clears PENDING");
    let mut put = Vec::new();
    fifo_destroy(&mut w.doms[0].as_mut().unwrap().chans, |m| put.push(m));
    put.sort_unstable();
    assert_eq!(put, [CB, CB + 1, ARRAY, ARRAY + 1]);
    assert!(!w.dom(0).chans.fifo().is_active());
    assert_eq!(w.dom(0).chans.fifo().frames().count(), 0);
    // 2-level again: sends use shared_info's bits, priorities are gone.
    let p = bind_ipi(&mut w, 0, 0).unwrap();
    send(&mut w, 0, p).unwrap();
    assert!(w.dom(0).bits.is_pending(p));
    assert_eq!(set_priority(&mut w, 0, p, 1), Err(Errno::ENOSYS));
    // And FIFO can be set up again.
    setup(&mut w, 0, 1, 1);
    // Death: ports closed (words cleared), frames still listed for the
    // caller to release.
    let q = bind_ipi(&mut w, 0, 0).unwrap();
    send(&mut w, 0, q).unwrap();
    close_all(&mut w, 0);
    assert_eq!(word(&w, 0, q) & PENDING, 0);
    assert_eq!(w.dom(0).chans.fifo().frames().count(), 2);
    // reinit (slot reuse) starts at 2-level.
    w.doms[0].as_mut().unwrap().chans = Channels::new(1).unwrap();
    assert!(!w.dom(0).chans.fifo().is_active());
}

#[derive(Clone, Debug)]
enum Op {
    Send(usize),
    Mask(usize),
    /// The guest clears MASKED itself (allowed while not BUSY).
    GuestUnmask(usize),
    Unmask(usize),
    Priority(usize, u32),
    Move(usize, u32),
    Drain(u32),
    Close(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6usize).prop_map(Op::Send),
        1 => (0..6usize).prop_map(Op::Mask),
        1 => (0..6usize).prop_map(Op::GuestUnmask),
        1 => (0..6usize).prop_map(Op::Unmask),
        1 => (0..6usize, 0..16u32).prop_map(|(p, q)| Op::Priority(p, q)),
        1 => (0..6usize, 0..2u32).prop_map(|(p, v)| Op::Move(p, v)),
        2 => (0..2u32).prop_map(Op::Drain),
        1 => (0..6usize).prop_map(Op::Close),
    ]
}

proptest! {
    /// Whatever the order of sends, masks, priority and vCPU changes,
    /// closes and partial consumption: no event is lost or delivered twice,
    /// the queues never cycle, and every queue drains.
    #[test]
    fn fifo_no_lost_or_duplicate_events(ops in proptest::collection::vec(op(), 1..80)) {
        let mut w = World::new(&[2]);
        setup(&mut w, 0, 2, 1);
        // Loopback interdomain pairs: sends on `a[i]` raise `b[i]`.
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..6 {
            let x = alloc_unbound(&mut w, 0, DOMID_SELF, 0, false).unwrap();
            let (y, _) = bind_interdomain(&mut w, 0, 0, x).unwrap();
            a.push(x);
            b.push(y);
        }
        let mut g = Guest::default();
        for v in 0..2 {
            g.drain(&mut w, 0, v);
        }
        // Ports (of b) with an event not yet handled.
        let mut outstanding = std::collections::BTreeSet::new();
        let mut closed = [false; 6];
        let deliver = |seen: Vec<u32>, out: &mut std::collections::BTreeSet<u32>| {
            for p in seen {
                prop_assert!(out.remove(&p), "port {} delivered without an event", p);
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Send(i) if !closed[i] => {
                    send(&mut w, 0, a[i]).unwrap();
                    outstanding.insert(b[i]);
                }
                Op::Mask(i) => set_word(&mut w, 0, b[i], |x| x | MASKED),
                Op::GuestUnmask(i)
                    if word(&w, 0, b[i]) & BUSY == 0 => {
                        set_word(&mut w, 0, b[i], |x| x & !MASKED);
                    }
                Op::Unmask(i) => {
                    unmask(&mut w, 0, b[i]).unwrap();
                }
                Op::Priority(i, q) => set_priority(&mut w, 0, b[i], q).unwrap(),
                Op::Move(i, v) if !closed[i] => bind_vcpu(&mut w, 0, b[i], v).unwrap(),
                Op::Drain(v) => {
                    let seen = g.drain(&mut w, 0, v);
                    deliver(seen, &mut outstanding)?;
                }
                Op::Close(i) if !closed[i] => {
                    close(&mut w, 0, b[i]).unwrap();
                    outstanding.remove(&b[i]);
                    closed[i] = true;
                }
                _ => {}
            }
        }
        // Unmask everything the way a guest must (the hypercall for a
        // pending event) and drain both vCPUs until nothing is left.
        for i in 0..6 {
            if !closed[i] {
                unmask(&mut w, 0, b[i]).unwrap();
            }
        }
        for _ in 0..3 {
            for v in 0..2 {
                let seen = g.drain(&mut w, 0, v);
                deliver(seen, &mut outstanding)?;
            }
        }
        prop_assert!(outstanding.is_empty(), "lost events on {:?}", outstanding);
        for &p in &b {
            prop_assert_eq!(word(&w, 0, p) & (LINKED | BUSY), 0);
        }
    }
}

/// The FIFO state is allocated by the first `init_control` only: each of
/// its allocations may fail, with `ENOMEM`, the frame not taken and the
/// domain still on 2-level; `EVTCHNOP_reset` frees it again.
#[test]
fn fifo_state_allocated_by_init_control_enomem_changes_nothing() {
    use crate::fallible::inject;
    let mut w = World::new(&[2]);
    assert!(!w.dom(0).chans.fifo().is_allocated());
    let mut nth = 0;
    loop {
        inject::fail_nth(Some(nth));
        let mut taken = false;
        let r = init_control(&mut w, 0, 0, CB, CB_OFF, |_| {
            taken = true;
            Ok(())
        });
        if r.is_ok() {
            assert!(inject::pending());
            inject::fail_nth(None);
            assert!(taken);
            break;
        }
        assert_eq!(r, Err(Errno::ENOMEM), "allocation {nth} failing");
        assert!(!taken, "no frame taken when the state cannot be had");
        let f = w.dom(0).chans.fifo();
        assert!(!f.is_active() && !f.is_allocated());
        assert_eq!(f.frames().count(), 0);
        nth += 1;
    }
    assert_eq!(nth, 4);
    // A second vCPU's control block and the array pages allocate nothing.
    inject::fail_nth(Some(0));
    init_control(&mut w, 0, 1, CB + 1, CB_OFF, ok).unwrap();
    for i in 0..3 {
        expand_array(&mut w, 0, ARRAY + i, ok).unwrap();
    }
    assert!(inject::pending());
    inject::fail_nth(None);
    // A take that fails on the first registration keeps nothing either.
    let mut v = World::new(&[1]);
    assert_eq!(
        init_control(&mut v, 0, 0, CB, CB_OFF, |_| Err(Errno::EINVAL)),
        Err(Errno::EINVAL)
    );
    assert!(!v.dom(0).chans.fifo().is_allocated());
    // Reset frees the state.
    let mut put = Vec::new();
    assert_eq!(
        reset(&mut w, 0, DOMID_SELF, false, false, || false),
        Ok(ResetStep::Done)
    );
    fifo_destroy(&mut w.doms[0].as_mut().unwrap().chans, |m| put.push(m));
    assert_eq!(put.len(), 5);
    assert!(!w.dom(0).chans.fifo().is_allocated());
    assert!(state_bytes(1) > 8192);
}
