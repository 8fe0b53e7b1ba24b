//! Events and time in one domain: shared info mapped with update_va_mapping,
//! system time from vcpu_time_info, VIRQ_TIMER one-shot and periodic timers,
//! IPI loopback with Xen's 2-level mask/pending/unmask semantics, the upcall
//! mask as the virtual interrupt flag, port exhaustion (XSA-317), polling
//! the maximum number of ports (XSA-221) and runstate accounting.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest_abi::errno::Errno;
use guest_abi::types::{DomId, Port, VcpuId};
use pv_guest_kernel::events::Handler;
use pv_guest_kernel::{StartInfo, events, println, test::Reporter, time};

extern crate alloc;

static IPI_HITS: AtomicU32 = AtomicU32::new(0);

fn on_ipi(_p: pv_guest_kernel::Port) {
    IPI_HITS.fetch_add(1, Ordering::SeqCst);
}

static BP_PORT: AtomicU32 = AtomicU32::new(0);

/// A handler's context: its events and the port of the last one.
struct Tally {
    hits: AtomicU32,
    last: AtomicU32,
}

impl Tally {
    const fn new() -> Self {
        Self {
            hits: AtomicU32::new(0),
            last: AtomicU32::new(0),
        }
    }

    fn on_event(&self, port: Port) {
        self.hits.fetch_add(1, Ordering::SeqCst);
        self.last.store(port.0, Ordering::SeqCst);
    }
}

static TALLY_B: Tally = Tally::new();

/// A trap handler that leaves an event pending with events disabled.
fn on_bp_send(_f: &mut pv_guest_kernel::traps::TrapFrame) {
    events::disable();
    let _ = events::send(Port(BP_PORT.load(Ordering::SeqCst)));
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let r = events::init();
    t.check("map-shared-info", r.is_ok(), format_args!("{r:?}"));
    if r.is_err() {
        t.finish()
    }
    let t0 = time::now_ns();
    let t1 = time::now_ns();
    t.check(
        "system-time",
        t0 > 0 && t1 >= t0,
        format_args!("t0 {t0} t1 {t1}"),
    );

    let tp = time::init();
    t.check("bind-virq-timer", tp.is_ok(), format_args!("{tp:?}"));
    events::enable();
    let start = time::now_ns();
    let r = time::sleep(5_000_000);
    let slept = time::now_ns() - start;
    t.check("sleep-ok", r.is_ok(), format_args!("{r:?}"));
    t.check(
        "sleep-5ms",
        slept >= 5_000_000 && time::timer_events() >= 1,
        format_args!("slept {slept} ns, {} timer events", time::timer_events()),
    );

    let port = events::bind_ipi(on_ipi).unwrap_or(Port(0));
    t.check("bind-ipi", port != Port(0), format_args!("no port"));
    let r = events::send(port);
    t.check(
        "ipi-delivered",
        r.is_ok() && IPI_HITS.load(Ordering::SeqCst) == 1,
        format_args!("send {r:?}, {} hits", IPI_HITS.load(Ordering::SeqCst)),
    );

    events::mask(port);
    let _ = events::send(port);
    t.check(
        "masked-stays-pending",
        IPI_HITS.load(Ordering::SeqCst) == 1 && events::is_pending(port),
        format_args!("hits {}", IPI_HITS.load(Ordering::SeqCst)),
    );
    let r = events::unmask(port);
    t.check(
        "unmask-delivers",
        r.is_ok() && IPI_HITS.load(Ordering::SeqCst) == 2,
        format_args!("unmask {r:?}, hits {}", IPI_HITS.load(Ordering::SeqCst)),
    );

    let was = events::save_and_disable();
    let _ = events::send(port);
    let during = IPI_HITS.load(Ordering::SeqCst);
    events::restore(was);
    t.check(
        "virtual-if",
        !was && during == 2 && IPI_HITS.load(Ordering::SeqCst) == 3,
        format_args!(
            "was {was}, during {during}, after {}",
            IPI_HITS.load(Ordering::SeqCst)
        ),
    );

    // Handlers with a context: two ports, one function, each its own
    // state (one on the heap): each event reaches its own context, with its
    // own port.
    let a: &'static Tally = alloc::boxed::Box::leak(alloc::boxed::Box::new(Tally::new()));
    let pa = events::bind_ipi(Handler::with(a, Tally::on_event));
    let pb = events::bind_ipi(Handler::with(&TALLY_B, Tally::on_event));
    if let (Ok(pa), Ok(pb)) = (pa, pb) {
        let _ = events::send(pa);
        let _ = events::send(pb);
        let _ = events::send(pb);
        t.check(
            "handler-context",
            a.hits.load(Ordering::SeqCst) == 1
                && a.last.load(Ordering::SeqCst) == pa.0
                && TALLY_B.hits.load(Ordering::SeqCst) == 2
                && TALLY_B.last.load(Ordering::SeqCst) == pb.0,
            format_args!(
                "a: {} hits, last {} (port {pa}); b: {} hits, last {} (port {pb})",
                a.hits.load(Ordering::SeqCst),
                a.last.load(Ordering::SeqCst),
                TALLY_B.hits.load(Ordering::SeqCst),
                TALLY_B.last.load(Ordering::SeqCst)
            ),
        );
        let _ = events::close(pa);
        let _ = events::close(pb);
    } else {
        t.fail("handler-context", format_args!("bind: {pa:?} {pb:?}"));
    }

    // The trap return re-enables events (they were enabled when int3 ran)
    // and must take the event left pending before main runs on, hypercall
    // or not (the SDK returns to kernel mode without one).
    let tr = pv_guest_kernel::traps::init();
    BP_PORT.store(port.0, Ordering::SeqCst);
    pv_guest_kernel::traps::set_handler(3, on_bp_send);
    let before = IPI_HITS.load(Ordering::SeqCst);
    // SAFETY: int3 traps to on_bp_send, which returns.
    unsafe { core::arch::asm!("int3") };
    let after = IPI_HITS.load(Ordering::SeqCst);
    let masked = events::save_and_disable();
    events::restore(masked);
    t.check(
        "pending-taken-at-trap-return",
        tr.is_ok() && after == before + 1 && !masked,
        format_args!("{tr:?}, hits {before} then {after}, events masked {masked}"),
    );

    let st = guest_abi::hypercall::evtchn_status(DomId::SELF, port);
    t.check(
        "status-ipi",
        st.map(|s| s.status) == Ok(guest_abi::event_channel::EVTCHNSTAT_IPI),
        format_args!("{st:?}"),
    );
    let r = events::close(port);
    let s = events::send(port);
    t.check(
        "send-on-closed",
        r.is_ok() && s == Err(Errno::EINVAL),
        format_args!("close {r:?} send {s:?}"),
    );
    let s = guest_abi::hypercall::evtchn_send(Port(5000));
    t.check(
        "send-out-of-range",
        s == Err(Errno::EINVAL),
        format_args!("{s:?}"),
    );
    let b = guest_abi::hypercall::evtchn_bind_interdomain(DomId(77), Port(1));
    t.check("bind-nonexistent-domain", b.is_err(), format_args!("{b:?}"));

    // XSA-317: allocation stops cleanly at the port limit.
    let mut n = 0u32;
    let mut last = Ok(Port(0));
    let mut first = 0;
    for _ in 0..5000 {
        last = guest_abi::hypercall::evtchn_alloc_unbound(DomId::SELF);
        match last {
            Ok(p) if first == 0 => first = p.0,
            Ok(_) => {}
            Err(_) => break,
        }
        n += 1;
    }
    t.check(
        "port-exhaustion",
        last == Err(Errno::ENOSPC) && n > 4000 && n < 4096,
        format_args!("{n} ports then {last:?}"),
    );
    let closed = (first..first + n)
        .filter(|&p| guest_abi::hypercall::evtchn_close(Port(p)).is_ok())
        .count();
    t.check(
        "close-all",
        closed == n as usize,
        format_args!("closed {closed} of {n}"),
    );
    // XSA-221: poll over the maximum number of ports, one pending.
    events::disable();
    let ipi = events::bind_ipi(on_ipi).unwrap_or(Port(0));
    let _ = events::send(ipi);
    let polled = [ipi; 128];
    let r = guest_abi::hypercall::sched_poll(&polled, 0);
    t.check("poll-128-ports", r.is_ok(), format_args!("{r:?}"));
    let too_many = [Port(1); 129];
    let r = guest_abi::hypercall::sched_poll(&too_many, 0);
    t.check("poll-too-many", r.is_err(), format_args!("{r:?}"));
    events::enable();

    // A periodic timer ticks while the vCPU runs (as on Xen, it does not
    // wake a blocked vCPU): spin until three timer events have arrived, with
    // a generous bound so a broken timer fails instead of hanging (events
    // that fire while another domain runs coalesce into one).
    let before = time::timer_events();
    let start = time::now_ns();
    let r = guest_abi::hypercall::vcpu_set_periodic_timer(VcpuId(0), 2_000_000);
    while time::timer_events() - before < 3 && time::now_ns() < start + 2_000_000_000 {
        core::hint::spin_loop();
    }
    let _ = guest_abi::hypercall::vcpu_stop_periodic_timer(VcpuId(0));
    let got = time::timer_events() - before;
    t.check(
        "periodic-timer",
        r.is_ok() && got >= 3,
        format_args!("{r:?}, {got} events at a 2 ms period within 2 s"),
    );
    let rs = guest_abi::hypercall::vcpu_get_runstate_info(VcpuId(0));
    t.check(
        "runstate",
        rs.as_ref().is_ok_and(|r| r.state == 0 && r.time[0] > 0),
        format_args!("{rs:?}"),
    );
    println!("events: done");
    t.finish()
}

pv_guest_kernel::main!(main);
