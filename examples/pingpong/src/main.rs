//! examples/pingpong: two domains bounce events over an interdomain event
//! channel. The pinger sends `rounds` events (default 1000), waiting for each
//! reply before sending the next, and prints the minimum, average and maximum
//! round trip measured with system time; both ends count events exactly and
//! report `Test result: SUCCESS` only if every round completed with no event
//! lost and none extra.
//!
//! Command line: `role=ping peer=1` or `role=pong peer=0` (domains are
//! numbered in manifest order), optional `rounds=N` (give both ends the same
//! value) and `wait=block|poll` (how to wait for an event; default `block`).
//!
//! # Rendezvous without xenstore
//!
//! The example uses no xenstore (it runs without a service domain), so the
//! two ends meet by convention:
//!
//! 1. Pong's *first* event-channel operation is
//!    `alloc_unbound(remote = peer)`. Ports are handed out lowest-first, so it
//!    gets the lowest port a fresh domain has free (port 1 today).
//! 2. Ping learns that number the same way before it touches any other port:
//!    it allocates one port of its own (`alloc_unbound(DOMID_SELF)`) and
//!    closes it again.
//! 3. Ping then retries `bind_interdomain(peer, that port)`, yielding between
//!    attempts: the call fails with `EINVAL` until pong has allocated the
//!    port, and succeeds exactly once afterwards (30 s limit).
//!
//! Binding marks ping's new local port pending (as in Xen, so that nothing
//! sent to an unbound port is lost); pong never sends before it is pinged,
//! so ping clears that bit before the first round. From then on the protocol
//! strictly alternates (each side clears its pending bit before it answers),
//! so 2-level events can never merge and counting them is exact.
//!
//! # Waiting
//!
//! - `wait=block`: a per-port handler counts events in the upcall; the main
//!   loop disables events, re-checks the counter and calls `SCHEDOP_block`
//!   (which re-enables delivery atomically). A one-shot timer (VIRQ_TIMER,
//!   bound after the rendezvous so it does not disturb the port numbering)
//!   bounds every wait: a reply missing for 5 s fails the run.
//! - `wait=poll`: events stay disabled; the loop tests and clears the port's
//!   pending bit and otherwise calls `SCHEDOP_poll` on the port with a 5 s
//!   timeout.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::types::{DomId, Port};
use pv_guest_kernel::{StartInfo, events, println, test::Reporter, time};

/// Events the upcall handler has seen on the channel (`wait=block`).
static EVENTS: AtomicU64 = AtomicU64::new(0);

/// Longest wait for one event once the exchange runs.
const ROUND_TIMEOUT_NS: u64 = 5_000_000_000;
/// Longest wait for the peer to show up (rendezvous, first ping).
const START_TIMEOUT_NS: u64 = 30_000_000_000;

fn on_event(_port: Port) {
    EVENTS.fetch_add(1, Ordering::SeqCst);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wait {
    Block,
    Poll,
}

/// One end of the channel and how it waits.
struct End {
    port: Port,
    wait: Wait,
    /// Events consumed so far (poll mode counts here, block mode in EVENTS).
    polled: u64,
    /// Timer events seen (block mode re-arms its watchdog when one fires).
    ticks: u64,
}

impl End {
    fn received(&self) -> u64 {
        match self.wait {
            Wait::Block => EVENTS.load(Ordering::SeqCst),
            Wait::Poll => self.polled,
        }
    }

    /// Waits until `target` events have arrived in total, at most
    /// `timeout_ns`. Returns whether they did.
    fn wait_for(&mut self, target: u64, timeout_ns: u64) -> bool {
        let start = time::now_ns();
        match self.wait {
            Wait::Block => loop {
                events::disable();
                if EVENTS.load(Ordering::SeqCst) >= target {
                    events::enable();
                    return true;
                }
                // The watchdog timer fired: give up if this wait is over
                // time, else re-arm it (so a timer is always armed here).
                let ticks = time::timer_events();
                if ticks != self.ticks {
                    self.ticks = ticks;
                    let now = time::now_ns();
                    if now.saturating_sub(start) >= timeout_ns {
                        events::enable();
                        return false;
                    }
                    let _ = guest_abi::hypercall::set_timer_op(now + ROUND_TIMEOUT_NS);
                }
                // Re-enables delivery atomically: an event (or timer) that
                // arrived after the checks above makes this return at once.
                let _ = guest_abi::hypercall::sched_block();
            },
            Wait::Poll => {
                let deadline = start + timeout_ns;
                let ports = [self.port];
                loop {
                    if events::is_pending(self.port) {
                        events::clear(self.port);
                        self.polled += 1;
                        if self.polled >= target {
                            return true;
                        }
                        continue;
                    }
                    if time::now_ns() >= deadline {
                        return false;
                    }
                    let _ = guest_abi::hypercall::sched_poll(&ports, deadline);
                }
            }
        }
    }

    /// Events that arrived beyond `expected` (after a short grace period for
    /// any stray one to land).
    fn extra(&mut self, expected: u64) -> u64 {
        for _ in 0..10 {
            let _ = guest_abi::hypercall::sched_yield();
        }
        if self.wait == Wait::Block {
            // Let the upcall run for anything still pending.
            events::disable();
            events::enable();
        }
        let pending = u64::from(events::is_pending(self.port));
        (self.received() + pending).saturating_sub(expected)
    }
}

/// Formats an optional errno as `" (EINVAL)"` or nothing.
struct Why(Option<Errno>);

impl core::fmt::Display for Why {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(e) => write!(f, " ({e:?})"),
            None => Ok(()),
        }
    }
}

fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Ping's side of the rendezvous: the port pong allocated, then ours bound to it.
fn connect(peer: DomId) -> Result<(Port, Port), Errno> {
    let probe = guest_abi::hypercall::evtchn_alloc_unbound(DomId::SELF)?;
    guest_abi::hypercall::evtchn_close(probe)?;
    let deadline = time::now_ns() + START_TIMEOUT_NS;
    loop {
        match events::bind_interdomain(peer, probe, on_event) {
            Ok(local) => return Ok((probe, local)),
            Err(Errno::EINVAL) if time::now_ns() < deadline => {
                let _ = guest_abi::hypercall::sched_yield();
            }
            Err(e) => return Err(e),
        }
    }
}

fn ping(t: &mut Reporter, peer: u16, rounds: u64, wait: Wait) {
    let (remote, port) = match connect(DomId(peer)) {
        Ok(p) => p,
        Err(e) => {
            t.fail(
                "rendezvous",
                format_args!("binding to domain {peer}: {e:?}"),
            );
            return;
        }
    };
    let st = guest_abi::hypercall::evtchn_status(DomId::SELF, port);
    let linked = st.is_ok_and(|s| s.status == guest_abi::event_channel::EVTCHNSTAT_INTERDOMAIN);
    t.check("rendezvous", linked, format_args!("status {st:?}"));
    println!("ping: local port {port} bound to port {remote} of domain {peer}");
    // The bind marked our port pending; pong has sent nothing yet.
    events::clear(port);
    let mut end = start(port, wait);

    let (mut min, mut max, mut sum, mut done) = (u64::MAX, 0u64, 0u64, 0u64);
    let mut why = None;
    for i in 1..=rounds {
        let t0 = time::now_ns();
        if let Err(e) = events::send(port) {
            why = Some((i, "send failed", Some(e)));
            break;
        }
        let timeout = if i == 1 {
            START_TIMEOUT_NS
        } else {
            ROUND_TIMEOUT_NS
        };
        if !end.wait_for(i, timeout) {
            why = Some((i, "no reply (lost event)", None));
            break;
        }
        let dt = time::now_ns() - t0;
        min = min.min(dt);
        max = max.max(dt);
        sum += dt;
        done = i;
    }
    match why {
        Some((i, what, e)) => t.fail(
            "all-replies",
            format_args!(
                "round {i} of {rounds}: {what}{}; {} replies",
                Why(e),
                end.received()
            ),
        ),
        None => t.check(
            "all-replies",
            end.received() == rounds,
            format_args!("{} replies to {rounds} pings", end.received()),
        ),
    }
    if let Some(avg) = sum.checked_div(done) {
        println!(
            "pingpong: {done} round trips, min {min} ns, avg {avg} ns, max {max} ns (wait={wait:?})"
        );
    }
    let extra = end.extra(rounds);
    t.check(
        "no-extra-events",
        extra == 0,
        format_args!("{extra} events beyond {rounds}"),
    );
}

fn pong(t: &mut Reporter, peer: u16, rounds: u64, wait: Wait) {
    // First event-channel operation of this domain: see the convention above.
    let port = match events::alloc_unbound(DomId(peer), on_event) {
        Ok(p) => p,
        Err(e) => {
            t.fail(
                "rendezvous",
                format_args!("alloc_unbound for domain {peer}: {e:?}"),
            );
            return;
        }
    };
    t.ok("rendezvous");
    println!("pong: port {port} waits for domain {peer}");
    let mut end = start(port, wait);
    let mut why = None;
    for i in 1..=rounds {
        let timeout = if i == 1 {
            START_TIMEOUT_NS
        } else {
            ROUND_TIMEOUT_NS
        };
        if !end.wait_for(i, timeout) {
            why = Some((i, "no ping (lost event)", None));
            break;
        }
        if let Err(e) = events::send(port) {
            why = Some((i, "send failed", Some(e)));
            break;
        }
    }
    match why {
        Some((i, what, e)) => t.fail(
            "all-pings",
            format_args!(
                "round {i} of {rounds}: {what}{}; {} pings",
                Why(e),
                end.received()
            ),
        ),
        None => t.check(
            "all-pings",
            end.received() == rounds,
            format_args!("{} pings, {rounds} expected", end.received()),
        ),
    }
    println!("pong: answered {} pings", end.received());
    let extra = end.extra(rounds);
    t.check(
        "no-extra-events",
        extra == 0,
        format_args!("{extra} events beyond {rounds}"),
    );
}

/// Sets up waiting on `port` once the channel exists.
fn start(port: Port, wait: Wait) -> End {
    let mut end = End {
        port,
        wait,
        polled: 0,
        ticks: 0,
    };
    if wait == Wait::Block {
        // Bound only now, so the channel got the lowest port.
        if time::init().is_ok() {
            end.ticks = time::timer_events();
            let _ = guest_abi::hypercall::set_timer_op(time::now_ns() + ROUND_TIMEOUT_NS);
        }
        EVENTS.store(0, Ordering::SeqCst);
        events::enable();
    }
    end
}

fn main(si: &'static StartInfo) {
    let cmdline = guest_abi::types::until_nul_str(&si.cmd_line).unwrap_or("");
    let mut t = Reporter::new();
    let role = arg(cmdline, "role");
    let peer = arg(cmdline, "peer").and_then(|v| v.parse::<u16>().ok());
    let rounds = arg(cmdline, "rounds").map_or(Some(1000), |v| v.parse::<u64>().ok());
    let wait = match arg(cmdline, "wait") {
        None | Some("block") => Some(Wait::Block),
        Some("poll") => Some(Wait::Poll),
        Some(_) => None,
    };
    let (Some(peer), Some(rounds), Some(wait)) = (peer, rounds, wait) else {
        t.fail(
            "cmdline",
            format_args!("{cmdline:?}: want role=ping|pong peer=N [rounds=N] [wait=block|poll]"),
        );
        t.finish()
    };
    if let Err(e) = events::init() {
        t.fail("events-init", format_args!("{e:?}"));
        t.finish()
    }
    match role {
        Some("ping") => ping(&mut t, peer, rounds, wait),
        Some("pong") => pong(&mut t, peer, rounds, wait),
        _ => t.fail(
            "cmdline",
            format_args!("{cmdline:?}: role must be ping or pong"),
        ),
    }
    t.finish()
}

pv_guest_kernel::main!(main);
