//! FIFO event channels on one domain, on the microvisor and on real Xen
//! alike: the FIFO ops refused before the switch (set_priority ENOSYS,
//! expand_array EOPNOTSUPP), init_control's checks in Xen's order (a vCPU
//! that does not exist, a block past the page end or unaligned, a frame
//! that is not RAM, a page table, a second block for one vCPU), an event
//! pending under 2-level carried over and delivered on unmask, arrival
//! order within a queue, higher priorities consumed first, set_priority's
//! checks, masking (before and while queued) and unmask re-linking, an
//! event for a port beyond the array delivered once expand_array adds its
//! page, Xen's limit of 128 array pages, the control block and an array
//! page never becoming page tables, and EVTCHNOP_reset returning the domain
//! to 2-level (and FIFO set up again after it).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest_abi::errno::Errno;
use guest_abi::event_channel::{EVTCHN_FIFO_LINK_BITS, EvtchnReset};
use guest_abi::hypercall::{evtchn_expand_array, evtchn_init_control};
use guest_abi::mmu::UVMF_INVLPG;
use guest_abi::types::{DomId, Port, VcpuId};
use pv_guest_kernel::{StartInfo, events, fifo, mm, println, test::Reporter};

/// The ports handled, in order (up to 16).
static LOG: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];
static LOG_N: AtomicU32 = AtomicU32::new(0);

fn on_event(port: Port) {
    let n = LOG_N.fetch_add(1, Ordering::SeqCst) as usize;
    if let Some(slot) = LOG.get(n) {
        slot.store(port.0, Ordering::SeqCst);
    }
}

/// The ports handled since the last call.
fn take_log() -> ([u32; 16], usize) {
    let n = (LOG_N.swap(0, Ordering::SeqCst) as usize).min(16);
    let mut out = [0; 16];
    for (o, l) in out.iter_mut().zip(&LOG).take(n) {
        *o = l.load(Ordering::SeqCst);
    }
    (out, n)
}

fn logged(expect: &[u32]) -> (bool, [u32; 16], usize) {
    let (got, n) = take_log();
    (got.get(..n) == Some(expect), got, n)
}

/// Sends on each port with events disabled, then enables them: the upcall
/// consumes everything at once, in queue order.
fn burst(ports: &[u32]) -> Result<(), Errno> {
    events::disable();
    for &p in ports {
        events::send(Port(p))?;
    }
    events::enable();
    Ok(())
}

fn uvm(va: u64, val: u64) -> Result<(), Errno> {
    // SAFETY: remaps one of this guest's own pages (read-only and back).
    unsafe { guest_abi::hypercall::update_va_mapping(va, val, UVMF_INVLPG) }
}

/// Remaps our page `va` (frame `mfn`) read-only, tries to pin it as an L1
/// table, and maps it writable again: the pin's result. Events are off
/// meanwhile (the upcall writes the control block).
fn try_pin(va: u64, mfn: u64) -> Result<(), Errno> {
    events::disable();
    let pin = uvm(va, (mfn << 12) | scenario_guests::pte::RO).and_then(|()| {
        let pin = mm::pin(mfn, 1);
        if pin.is_ok() {
            let _ = mm::unpin(mfn);
        }
        uvm(va, (mfn << 12) | scenario_guests::pte::DATA).and(pin)
    });
    events::enable();
    pin
}

fn reset_self() -> Result<(), Errno> {
    guest_abi::hypercall::event_channel_op(&mut EvtchnReset { dom: DomId::SELF.0 })
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    if let Err(e) = events::init() {
        t.fail("events-init", format_args!("{e:?}"));
        t.finish()
    }
    events::enable();
    let (scratch_va, scratch) = mm::alloc_page().expect("scratch page");
    let _ = scratch_va;

    // Before the switch: no priorities, no array.
    let p0 = events::bind_ipi(on_event).map_or(0, |p| p.0);
    let sp = fifo::set_priority(Port(p0), 3);
    let ex = evtchn_expand_array(scratch);
    t.check(
        "fifo-ops-before-init-control",
        p0 != 0 && sp == Err(Errno::ENOSYS) && ex == Err(Errno::EOPNOTSUPP),
        format_args!("port {p0}: set_priority {sp:?}, expand_array {ex:?}"),
    );

    // init_control's checks, in Xen's order.
    let (_, cb) = mm::alloc_page().expect("page");
    let bad_vcpu = evtchn_init_control(cb, 4096 - 72 + 8, VcpuId(4096));
    let past_end = evtchn_init_control(cb, 4096 - 72 + 8, VcpuId(0));
    let unaligned = evtchn_init_control(cb, 4, VcpuId(0));
    let not_ram = evtchn_init_control(1 << 36, 0, VcpuId(0));
    let table = evtchn_init_control(mm::current_l4_mfn(), 0, VcpuId(0));
    t.check(
        "init-control-checks",
        bad_vcpu == Err(Errno::ENOENT)
            && past_end == Err(Errno::EINVAL)
            && unaligned == Err(Errno::EINVAL)
            && not_ram == Err(Errno::EINVAL)
            && table == Err(Errno::EINVAL),
        format_args!(
            "bad vcpu {bad_vcpu:?}, past end {past_end:?}, unaligned {unaligned:?}, \
             not RAM {not_ram:?}, page table {table:?}"
        ),
    );
    // Still 2-level after the refusals.
    let sp = fifo::set_priority(Port(p0), 3);
    t.check(
        "refusals-leave-2-level",
        sp == Err(Errno::ENOSYS),
        format_args!("{sp:?}"),
    );

    // The last offset that fits, on vCPU 0: the switch.
    let bits = evtchn_init_control(cb, 4096 - 72, VcpuId(0));
    let again = evtchn_init_control(cb, 0, VcpuId(0));
    t.check(
        "init-control",
        bits == Ok(EVTCHN_FIFO_LINK_BITS as u8) && again == Err(Errno::EINVAL),
        format_args!("first {bits:?}, second for the same vCPU {again:?}"),
    );
    // Back to 2-level, and the library's own switch (its control block at
    // offset 0 of a page of its own, one array page).
    let r = reset_self();
    let p0 = events::bind_ipi(on_event).map_or(0, |p| p.0);
    events::mask(Port(p0));
    let _ = events::send(Port(p0));
    // An event pending (masked) under 2-level, to carry over.
    let carried = events::is_pending(Port(p0));
    let lib = fifo::init();
    t.check(
        "switch",
        r.is_ok() && lib.is_ok() && fifo::is_active(),
        format_args!("reset {r:?}, fifo::init {lib:?}"),
    );
    if lib.is_err() {
        t.finish()
    }

    // The 2-level pending event came over, masked: queued on unmask.
    let pending = events::is_pending(Port(p0));
    let before = take_log().1;
    let un = events::unmask(Port(p0));
    let (ok, got, n) = logged(&[p0]);
    t.check(
        "pending-carried-over-unmask-links",
        carried && pending && before == 0 && un.is_ok() && ok,
        format_args!(
            "2-level pending {carried}, FIFO pending {pending}, handled before unmask {before}, \
             unmask {un:?}, handled {:?}",
            &got[..n]
        ),
    );

    // Arrival order within one queue.
    let a = events::bind_ipi(on_event).map_or(0, |p| p.0);
    let b = events::bind_ipi(on_event).map_or(0, |p| p.0);
    let c = events::bind_ipi(on_event).map_or(0, |p| p.0);
    let r = burst(&[b, c, a]);
    let (ok, got, n) = logged(&[b, c, a]);
    t.check(
        "fifo-order",
        r.is_ok() && ok,
        format_args!("{r:?}, handled {:?}", &got[..n]),
    );
    // A send on a queued event adds nothing.
    let r = burst(&[a, a, a]);
    let (ok, got, n) = logged(&[a]);
    t.check(
        "queued-once",
        r.is_ok() && ok,
        format_args!("{r:?}, handled {:?}", &got[..n]),
    );

    // Priorities: a 2, c default (7), b 12; the highest goes first.
    let s1 = fifo::set_priority(Port(a), 2);
    let s2 = fifo::set_priority(Port(b), 12);
    let r = burst(&[b, c, a]);
    let (ok, got, n) = logged(&[a, c, b]);
    t.check(
        "priorities",
        s1.is_ok() && s2.is_ok() && r.is_ok() && ok,
        format_args!("{s1:?} {s2:?} {r:?}, handled {:?}", &got[..n]),
    );
    let big = fifo::set_priority(Port(a), 16);
    let far = fifo::set_priority(Port(100_000), 3);
    let top = fifo::set_priority(Port(c), 0);
    let low = fifo::set_priority(Port(c), 15);
    t.check(
        "set-priority-checks",
        big == Err(Errno::EINVAL) && far == Err(Errno::EINVAL) && top.is_ok() && low.is_ok(),
        format_args!("priority 16 {big:?}, port 100000 {far:?}, 0 {top:?}, 15 {low:?}"),
    );

    // Masked: pending, not delivered; unmask links and delivers it.
    events::mask(Port(a));
    let s = events::send(Port(a));
    let held = take_log().1 == 0 && events::is_pending(Port(a));
    let un = events::unmask(Port(a));
    let (ok, got, n) = logged(&[a]);
    t.check(
        "mask-unmask-relinks",
        s.is_ok() && held && un.is_ok() && ok,
        format_args!(
            "send {s:?}, held while masked {held}, unmask {un:?}, handled {:?}",
            &got[..n]
        ),
    );
    // Masked while queued: skipped by the consumer, still pending, and
    // delivered once on unmask.
    events::disable();
    let s = events::send(Port(a));
    events::mask(Port(a));
    events::enable();
    let held = take_log().1 == 0 && events::is_pending(Port(a));
    let un = events::unmask(Port(a));
    let (ok, got, n) = logged(&[a]);
    t.check(
        "masked-while-queued",
        s.is_ok() && held && un.is_ok() && ok,
        format_args!(
            "send {s:?}, held {held}, unmask {un:?}, handled {:?}",
            &got[..n]
        ),
    );

    // A port beyond the array's one page: its event waits for the page.
    let mut extra = 0u32;
    let mut last = 0;
    while last < 1024 {
        match events::bind_ipi(on_event) {
            Ok(p) => {
                last = p.0;
                extra += 1;
            }
            Err(e) => {
                t.fail("bind-many", format_args!("after {extra}: {e:?}"));
                break;
            }
        }
    }
    let s = events::send(Port(last));
    let waiting = take_log().1 == 0 && !events::is_pending(Port(last));
    let grown = fifo::expand();
    let (ok, got, n) = logged(&[last]);
    t.check(
        "expand-array-delivers",
        last >= 1024 && s.is_ok() && waiting && grown == Ok(2048) && ok,
        format_args!(
            "port {last}: send {s:?}, waiting {waiting}, expand {grown:?}, handled {:?}",
            &got[..n]
        ),
    );
    for p in (last + 1 - extra)..=last {
        let _ = events::close(Port(p));
    }
    // Xen's limit: 128 pages (the rest all one scratch frame).
    let mut added = 2;
    let mut err = Ok(());
    while added <= 128 {
        err = evtchn_expand_array(scratch);
        if err.is_err() {
            break;
        }
        added += 1;
    }
    t.check(
        "expand-array-limit",
        added == 128 && err == Err(Errno::ENOSPC),
        format_args!("{added} pages, then {err:?}"),
    );

    // Frames the hypervisor writes never become page tables.
    let (cb_va, cb_mfn) = fifo::control_block(VcpuId(0)).expect("control block");
    let pin_cb = try_pin(cb_va, cb_mfn);
    let w = fifo::word(a).expect("word") as *const AtomicU32 as u64 & !0xFFF;
    let pin_arr = try_pin(w, mm::pfn_to_mfn(w / 4096));
    t.check(
        "fifo-frames-not-page-tables",
        pin_cb.is_err() && pin_arr.is_err(),
        format_args!("pin control block {pin_cb:?}, pin array page {pin_arr:?}"),
    );
    // Delivery still works after all that.
    let r = burst(&[c, a]);
    let (ok, got, n) = logged(&[a, c]);
    t.check(
        "still-delivering",
        r.is_ok() && ok,
        format_args!("{r:?}, handled {:?}", &got[..n]),
    );

    // EVTCHNOP_reset: every port closed, back to 2-level.
    let r = reset_self();
    fifo::forget();
    let sp = fifo::set_priority(Port(a), 3);
    let ex = evtchn_expand_array(scratch);
    let q = events::bind_ipi(on_event).map_or(0, |p| p.0);
    let s = events::send(Port(q));
    let (ok, got, n) = logged(&[q]);
    t.check(
        "reset-back-to-2-level",
        r.is_ok()
            && sp == Err(Errno::ENOSYS)
            && ex == Err(Errno::EOPNOTSUPP)
            && q != 0
            && s.is_ok()
            && ok,
        format_args!(
            "reset {r:?}, set_priority {sp:?}, expand_array {ex:?}, \
             port {q} send {s:?}, handled {:?}",
            &got[..n]
        ),
    );
    let sp = fifo::set_priority(Port(q), 3);
    let again = fifo::init();
    // (Real Xen may raise a port again here whose event once waited for
    // its array page: its flag for that outlives the port. Spurious events
    // are allowed; only the send below is checked.)
    let _ = take_log();
    let s = events::send(Port(q));
    let (ok, got, n) = logged(&[q]);
    t.check(
        "fifo-again-after-reset",
        sp == Err(Errno::ENOSYS) && again.is_ok() && s.is_ok() && ok,
        format_args!(
            "set_priority under 2-level {sp:?}, fifo::init {again:?}, send {s:?}, handled {:?}",
            &got[..n]
        ),
    );
    println!("evtchn-fifo: done");
    t.finish()
}

pv_guest_kernel::main!(main);
