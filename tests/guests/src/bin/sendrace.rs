//! Event sends without the hypervisor lock, raced against the bindings and
//! the lives of their peers (scenario smp-send-race, 2 CPUs).
//!
//! - `role=victim`: allocates `PORTS` unbound ports for domain 0 (ports
//!   1..=PORTS, in order), then one more to say it is ready, takes their
//!   events, and blocks until domain 0 ends it.
//! - `role=sender victims=N` (domain 0, privileged, 2 vCPUs): vCPU 1 sends
//!   on whatever port `PORT` names, as fast as it can, all the time. vCPU 0
//!   meanwhile binds that port to each victim's ports in turn and closes it
//!   again (so a send finds its peer changed under it), then ends each
//!   victim (SCHEDOP_remote_shutdown) while vCPU 1 sends to it. Every send
//!   must return 0, or EINVAL while the port is closed (Xen's answers for a
//!   bound or unbound port, and a free one); nothing else, nothing may
//!   crash, the frame table audits clean, and after its peer died the port
//!   is unbound (EVTCHNOP_status), as Xen leaves it.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::sched::ShutdownReason;
use guest_abi::types::{DomId, Port, VcpuId};
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::{StartInfo, events, println, smp, time};

/// Ports each victim allocates for the sender.
const PORTS: u32 = 8;
/// Sends the sender's vCPU 1 makes between two of vCPU 0's steps.
const STEP: u64 = 200;

/// The sender's port vCPU 1 sends on (0: none yet).
static PORT: AtomicU32 = AtomicU32::new(0);
static SENDS: AtomicU64 = AtomicU64::new(0);
static EINVALS: AtomicU64 = AtomicU64::new(0);
/// The first answer that was neither 0 nor EINVAL (0: none).
static ODD: AtomicI32 = AtomicI32::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static EVENTS_SEEN: AtomicU64 = AtomicU64::new(0);

fn on_event(_port: Port) {
    EVENTS_SEEN.fetch_add(1, Ordering::Relaxed);
}

fn victim(mut r: Reporter) -> ! {
    let mut ok = true;
    for want in 1..=PORTS {
        match events::alloc_unbound(DomId(0), on_event) {
            Ok(p) if p == Port(want) => {}
            other => {
                ok = false;
                r.fail("ports", format_args!("port {want}: {other:?}"));
            }
        }
    }
    if ok {
        r.ok("ports");
    }
    r.print_verdict();
    // Ready (its verdict printed): one more port, the sender's signal.
    let _ = events::alloc_unbound(DomId(0), on_event);
    events::enable();
    // Ended by domain 0.
    loop {
        let _ = guest_abi::hypercall::sched_block();
    }
}

fn sender_vcpu(_v: VcpuId) -> ! {
    while !STOP.load(Ordering::SeqCst) {
        let p = PORT.load(Ordering::SeqCst);
        if p == 0 {
            core::hint::spin_loop();
            continue;
        }
        match events::send(Port(p)) {
            Ok(()) => {}
            Err(Errno::EINVAL) => {
                EINVALS.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = ODD.compare_exchange(0, e.0, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
        SENDS.fetch_add(1, Ordering::SeqCst);
    }
    smp::down_self()
}

/// Lets vCPU 1 make `STEP` more sends (false if it stopped making any).
fn let_it_send() -> bool {
    let from = SENDS.load(Ordering::SeqCst);
    let deadline = time::now_ns() + 5_000_000_000;
    while SENDS.load(Ordering::SeqCst) < from + STEP {
        if time::now_ns() > deadline {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn sender(mut r: Reporter, victims: u16) -> ! {
    smp::init().expect("smp");
    let stack = smp::alloc_stack(16 * 1024).expect("a vCPU stack");
    if let Err(e) = smp::start(VcpuId(1), sender_vcpu, stack) {
        r.fail("start", format_args!("{e:?}"));
        r.finish()
    }
    let mut progress = true;
    let mut binds = 0u32;
    let mut unbound_after_death = true;
    for v in 1..=victims {
        // The victim is ready once it allocated one port more than it
        // offers (after its own checks).
        let deadline = time::now_ns() + 5_000_000_000;
        loop {
            if let Ok(l) = events::bind_interdomain(DomId(v), Port(PORTS + 1), on_event) {
                let _ = events::close(l);
                break;
            }
            if time::now_ns() > deadline {
                r.fail("victim-ready", format_args!("domain {v}"));
                break;
            }
            let _ = guest_abi::hypercall::sched_yield();
        }
        // Bind each of its ports, let vCPU 1 send on it, close it under
        // vCPU 1's sends.
        for rp in 1..=PORTS {
            let deadline = time::now_ns() + 5_000_000_000;
            let local = loop {
                match events::bind_interdomain(DomId(v), Port(rp), on_event) {
                    Ok(l) => break Some(l),
                    Err(_) if time::now_ns() < deadline => {
                        let _ = guest_abi::hypercall::sched_yield();
                    }
                    Err(e) => {
                        r.fail("bind", format_args!("domain {v} port {rp}: {e:?}"));
                        break None;
                    }
                }
            };
            let Some(local) = local else { continue };
            binds += 1;
            PORT.store(local.0, Ordering::SeqCst);
            progress &= let_it_send();
            if rp < PORTS {
                let _ = events::close(local);
                progress &= let_it_send();
            } else {
                // The last one stays bound while the victim is ended.
                let end = guest_abi::hypercall::raw::sched_remote_shutdown(
                    DomId(v),
                    ShutdownReason::Poweroff,
                );
                if end.is_err() {
                    r.fail("remote-shutdown", format_args!("domain {v}: {end:?}"));
                }
                progress &= let_it_send();
                // Its peer gone, the port is unbound (Xen's evtchn_close of
                // the dead end), waiting for domain v again.
                let st = guest_abi::hypercall::evtchn_status(DomId::SELF, local);
                if !matches!(st, Ok(s) if s.status == guest_abi::event_channel::EVTCHNSTAT_UNBOUND)
                {
                    unbound_after_death = false;
                    println!("sendrace: port {} after domain {v} died: {st:?}", local.0);
                }
                PORT.store(0, Ordering::SeqCst);
                let _ = events::close(local);
            }
        }
    }
    STOP.store(true, Ordering::SeqCst);
    r.check(
        "bound-every-port",
        binds == u32::from(victims) * PORTS,
        format_args!("{binds} binds"),
    );
    r.check(
        "sends-kept-going",
        progress,
        format_args!("vCPU 1 stopped sending"),
    );
    let odd = ODD.load(Ordering::SeqCst);
    r.check(
        "every-send-0-or-einval",
        odd == 0,
        format_args!("a send returned -{odd}"),
    );
    r.check(
        "unbound-after-peer-died",
        unbound_after_death,
        format_args!("see above"),
    );
    println!(
        "sendrace: {} sends ({} EINVAL while closed), {} binds",
        SENDS.load(Ordering::SeqCst),
        EINVALS.load(Ordering::SeqCst),
        binds
    );
    r.finish()
}

fn main(si: &'static StartInfo) {
    let r = Reporter::new();
    events::init().expect("events");
    let arg = |k| scenario_guests::arg(si, k);
    match arg("role") {
        Some("victim") => victim(r),
        _ => {
            let n = arg("victims").and_then(|v| v.parse().ok()).unwrap_or(3);
            sender(r, n)
        }
    }
}

pv_guest_kernel::main!(main);
