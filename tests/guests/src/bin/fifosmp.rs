//! FIFO event channels on several vCPUs of one domain (2 or more; the
//! count is found with VCPUOP_is_up), on the microvisor and on real Xen
//! alike:
//! - `init-control-per-vcpu`: EVTCHNOP_init_control for a vCPU that does
//!   not exist is ENOENT; for a vCPU that exists but is down it succeeds
//!   (vCPU 1's block, registered by vCPU 0); twice for one vCPU is EINVAL;
//! - `event-before-control-block`: an event for vCPU 1 sent before vCPU 1
//!   has a control block is dropped, not even marked pending (Xen 4.17
//!   logs `d0v1 has no FIFO event channel control block`); when vCPU 1
//!   later unmasks the port nothing comes (its queue step below would show
//!   it);
//! - `queues-per-vcpu-N`: each vCPU from 2 on registers its own control
//!   block; every secondary vCPU binds three IPI ports on itself (priorities
//!   2, 12 and the default 7), vCPU 0 sends on them while that vCPU has
//!   events disabled, and they are handled on that vCPU, highest priority
//!   first;
//! - `bind-vcpu-moves-queue`: an interdomain loopback port moved with
//!   EVTCHNOP_bind_vcpu to the last vCPU is delivered there (bind_vcpu to
//!   a vCPU that does not exist: ENOENT; on an IPI port: EINVAL).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use guest_abi::errno::Errno;
use guest_abi::event_channel::{EVTCHN_FIFO_LINKED, EVTCHN_FIFO_PENDING, EvtchnBindVcpu};
use guest_abi::hypercall::evtchn_init_control;
use guest_abi::types::{DomId, Port, VcpuId};
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::{StartInfo, events, fifo, mm, println, smp, time};

/// Most vCPUs looked at.
const MAX: usize = 8;
/// Events logged per vCPU.
const LOG_LEN: usize = 8;

/// Per vCPU: the ports handled on it, in order.
static LOG: [[AtomicU32; LOG_LEN]; MAX] = [const { [const { AtomicU32::new(0) }; LOG_LEN] }; MAX];
static LOG_N: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
/// Per vCPU: its three IPI ports (a: priority 2, b: 12, c: default).
static PORTS: [[AtomicU32; 3]; MAX] = [const { [const { AtomicU32::new(0) }; 3] }; MAX];
/// Per vCPU: its setup result (0 ok, else the negated errno), once ready.
static SETUP: [AtomicU32; MAX] = [const { AtomicU32::new(u32::MAX) }; MAX];
static SENT: [AtomicBool; MAX] = [const { AtomicBool::new(false) }; MAX];
static DONE: [AtomicBool; MAX] = [const { AtomicBool::new(false) }; MAX];
/// The port vCPU 1 is to unmask once it runs (the event sent before it
/// had a control block).
static EARLY: AtomicU32 = AtomicU32::new(0);
/// Set by vCPU 0 when the workers may take themselves down.
static FINISH: AtomicBool = AtomicBool::new(false);

fn on_event(port: Port) {
    let v = smp::vcpu_id().0 as usize % MAX;
    let n = LOG_N[v].fetch_add(1, Ordering::SeqCst) as usize;
    if let Some(slot) = LOG[v].get(n) {
        slot.store(port.0, Ordering::SeqCst);
    }
}

/// The ports handled on vCPU `v` since the last call. A handler on that
/// vCPU counts its entry before it writes the port, so a slot counted but
/// still 0 (no port is 0; each slot read is cleared) is being written: it
/// is waited for (as [`wait`] does) rather than read as whatever an
/// earlier step left there.
fn take_log(v: usize) -> heapless_log::Log {
    let n = (LOG_N[v].swap(0, Ordering::SeqCst) as usize).min(LOG_LEN);
    let mut out = heapless_log::Log::default();
    for l in LOG[v].iter().take(n) {
        let _ = wait(|| l.load(Ordering::SeqCst) != 0);
        out.push(l.swap(0, Ordering::SeqCst));
    }
    out
}

mod heapless_log {
    /// Up to `LOG_LEN` ports.
    #[derive(Default, Debug, PartialEq, Eq)]
    pub struct Log {
        pub ports: [u32; super::LOG_LEN],
        pub n: usize,
    }

    impl Log {
        pub fn push(&mut self, p: u32) {
            if let Some(s) = self.ports.get_mut(self.n) {
                *s = p;
                self.n += 1;
            }
        }

        pub fn is(&self, expect: &[u32]) -> bool {
            self.ports.get(..self.n) == Some(expect)
        }

        pub fn as_slice(&self) -> &[u32] {
            self.ports.get(..self.n).unwrap_or(&[])
        }
    }
}

/// Waits (yielding) until `done` holds, at most two seconds.
fn wait(done: impl Fn() -> bool) -> bool {
    let deadline = time::now_ns() + 2_000_000_000;
    while !done() {
        if time::now_ns() > deadline {
            return false;
        }
        let _ = guest_abi::hypercall::sched_yield();
    }
    true
}

fn errno_word(r: Result<(), Errno>) -> u32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.0 as u32,
    }
}

/// A secondary vCPU: its control block (from vCPU 2 on), its three IPI
/// ports, events off until vCPU 0 has sent on them all.
fn worker(VcpuId(v): VcpuId) -> ! {
    let i = v as usize % MAX;
    if v == 1 {
        // The event sent before this vCPU had a control block.
        let early = EARLY.load(Ordering::SeqCst);
        if early != 0 {
            let _ = events::unmask(Port(early));
        }
    }
    events::disable();
    let setup = (|| -> Result<(), Errno> {
        if v >= 2 {
            fifo::init_vcpu(VcpuId(v))?;
        }
        for (k, prio) in [(0, Some(2)), (1, Some(12)), (2, None)] {
            let p = smp::bind_ipi(VcpuId(v), on_event)?;
            if let Some(prio) = prio {
                fifo::set_priority(p, prio)?;
            }
            PORTS[i][k].store(p.0, Ordering::SeqCst);
        }
        Ok(())
    })();
    SETUP[i].store(errno_word(setup), Ordering::SeqCst);
    while !SENT[i].load(Ordering::SeqCst) {
        let _ = guest_abi::hypercall::sched_yield();
    }
    events::enable();
    DONE[i].store(true, Ordering::SeqCst);
    while !FINISH.load(Ordering::SeqCst) {
        let _ = guest_abi::hypercall::sched_yield();
    }
    smp::down_self()
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let init = events::init().and_then(|()| smp::init());
    events::enable();
    let fifo = init.and_then(|()| fifo::init());
    if let Err(e) = fifo {
        t.fail("fifo-init", format_args!("{e:?}"));
        t.finish()
    }
    // The domain's vCPUs: the first number is_up refuses.
    let n = (1..=MAX as u32)
        .find(|&v| guest_abi::hypercall::vcpu_is_up(VcpuId(v)) == Err(Errno::ENOENT))
        .unwrap_or(MAX as u32);
    println!("fifo-smp: {n} vCPUs");
    if n < 2 {
        t.fail(
            "vcpus",
            format_args!("{n} vCPUs: this test needs 2 or more"),
        );
        t.finish()
    }

    // An event for vCPU 1 before it has a control block.
    let early = events::bind_ipi_on(VcpuId(1), on_event).map_or(0, |p| p.0);
    events::mask(Port(early));
    let sent = events::send(Port(early));
    let word = fifo::word(early).map_or(0, |w| w.load(Ordering::SeqCst));

    // init_control per vCPU.
    let (_, page) = mm::alloc_page().expect("page");
    let none = evtchn_init_control(page, 0, VcpuId(n));
    let first = fifo::init_vcpu(VcpuId(1));
    let twice = evtchn_init_control(page, 0, VcpuId(1));
    t.check(
        "init-control-per-vcpu",
        none == Err(Errno::ENOENT) && first.is_ok() && twice == Err(Errno::EINVAL),
        format_args!("vCPU {n}: {none:?}; vCPU 1 (down): {first:?}, again {twice:?}"),
    );

    // The workers.
    EARLY.store(early, Ordering::SeqCst);
    for v in 1..n {
        let started =
            smp::alloc_stack(16 * 1024).and_then(|top| smp::start(VcpuId(v), worker, top));
        if let Err(e) = started {
            t.fail("start", format_args!("vCPU {v}: {e:?}"));
            t.finish()
        }
    }

    // The early event was dropped: neither pending nor linked.
    let pending = word & (1 << EVTCHN_FIFO_PENDING) != 0;
    let linked = word & (1 << EVTCHN_FIFO_LINKED) != 0;
    t.check(
        "event-before-control-block",
        early != 0 && sent.is_ok() && !pending && !linked,
        format_args!(
            "port {early}: send {sent:?}; word {word:#x} (pending {pending}, linked {linked})"
        ),
    );

    // Each secondary vCPU's queues.
    for v in 1..n as usize {
        let ready = wait(|| SETUP[v].load(Ordering::SeqCst) != u32::MAX);
        let setup = SETUP[v].load(Ordering::SeqCst);
        let [a, b, c] = [0, 1, 2].map(|k| PORTS[v][k].load(Ordering::SeqCst));
        for p in [b, c, a] {
            let _ = events::send(Port(p));
        }
        SENT[v].store(true, Ordering::SeqCst);
        let done = wait(|| DONE[v].load(Ordering::SeqCst));
        let log = take_log(v);
        let on0 = take_log(0);
        t.check(
            step_name(v),
            ready && setup == 0 && done && log.is(&[a, c, b]) && on0.is(&[]),
            format_args!(
                "setup errno {setup}; ports a {a} (priority 2), b {b} (12), c {c} (7) sent b, c, \
                 a: handled on vCPU {v}: {:?}, on vCPU 0: {:?}",
                log.as_slice(),
                on0.as_slice()
            ),
        );
    }

    // bind_vcpu moves an interdomain port's events to another vCPU.
    let last = n - 1;
    let u = events::alloc_unbound(DomId::SELF, on_event).map_or(0, |p| p.0);
    let l = events::bind_interdomain(DomId::SELF, Port(u), on_event).map_or(0, |p| p.0);
    let bind = |port: u32, vcpu: u32| {
        guest_abi::hypercall::event_channel_op(&mut EvtchnBindVcpu { port, vcpu })
    };
    let no_vcpu = bind(u, n);
    let ipi = bind(PORTS[1][0].load(Ordering::SeqCst), 0);
    let moved = bind(u, last);
    let sent = events::send(Port(l));
    let reached = wait(|| LOG_N[last as usize].load(Ordering::SeqCst) > 0);
    let log = take_log(last as usize);
    let on0 = take_log(0);
    t.check(
        "bind-vcpu-moves-queue",
        u != 0
            && l != 0
            && no_vcpu == Err(Errno::ENOENT)
            && ipi == Err(Errno::EINVAL)
            && moved.is_ok()
            && sent.is_ok()
            && reached
            && log.is(&[u])
            && on0.is(&[]),
        format_args!(
            "ports {u} and {l}: bind_vcpu to vCPU {n} {no_vcpu:?}, an IPI port {ipi:?}, to vCPU \
             {last} {moved:?}; send {sent:?}; handled on vCPU {last}: {:?}, on vCPU 0: {:?}",
            log.as_slice(),
            on0.as_slice()
        ),
    );

    FINISH.store(true, Ordering::SeqCst);
    println!("fifo-smp: done");
    t.finish()
}

/// The step name for vCPU `v`'s queues.
fn step_name(v: usize) -> &'static str {
    [
        "queues-per-vcpu-0",
        "queues-per-vcpu-1",
        "queues-per-vcpu-2",
        "queues-per-vcpu-3",
        "queues-per-vcpu-4",
        "queues-per-vcpu-5",
        "queues-per-vcpu-6",
        "queues-per-vcpu-7",
    ]
    .get(v)
    .copied()
    .unwrap_or("queues-per-vcpu")
}

pv_guest_kernel::main!(main);
