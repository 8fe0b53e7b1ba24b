//! A CPU-bound domain that measures its own share of the CPU: it spins
//! (never blocks, never yields) from system time `t0` to `t1` and reads its
//! runstate at both ends. Its share is the running time gained over the
//! window divided by the window's length.
//!
//! Every hog of a scenario uses the same absolute window, so they all
//! measure the same stretch of time whatever order they start in. A hog that
//! is off the CPU at `t0` (or `t1`) reads its runstate only when it runs
//! again, but it gained no running time meanwhile, so the reading is that of
//! `t0` (`t1`) to within the few instructions between its return and the
//! hypercall; the denominator is always exactly `t1 - t0`.
//!
//! Command line (all times in ms of system time, shares in per mille):
//!
//! - `share=E tol=T`: pass if the share is within E ± T;
//! - `max=M tol=T`: pass if the share is at most M + T (a cap);
//! - `min=M tol=T`: pass if the share is at least M - T;
//! - `start=MS` (default 500): t0, the start of the window (late enough
//!   for every hog to have started, even on a loaded host under TCG);
//! - `span=MS` (default 2000): t1 - t0;
//! - `name=X`: a label for the printed figure.
//!
//! It prints `cpuhog X: ran R ns of W ns: share S per mille (...)` and one
//! `ok share` / `FAIL share` step.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use guest_abi::types::VcpuId;
use pv_guest_kernel::{StartInfo, events, println, test::Reporter, time};
use scenario_guests::arg;

fn running_ns() -> Option<u64> {
    guest_abi::hypercall::vcpu_get_runstate_info(VcpuId(0))
        .ok()
        .map(|r| r.time[0])
}

fn spin_until(t: u64) {
    while time::now_ns() < t {
        core::hint::spin_loop();
    }
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let num = |k: &str| arg(si, k).and_then(|v| v.parse::<u64>().ok());
    let name = arg(si, "name").unwrap_or("hog");
    let start_ms = num("start").unwrap_or(500);
    let span_ms = num("span").unwrap_or(2000);
    let tol = num("tol");
    let modes = [num("share"), num("max"), num("min")];
    let Some(tol) = tol.filter(|_| modes.iter().flatten().count() == 1 && span_ms > 0) else {
        t.fail(
            "cmdline",
            format_args!(
                "{:?}: want share=E|max=M|min=M tol=T [start=MS] [span=MS] (per mille, ms)",
                scenario_guests::cmdline(si)
            ),
        );
        t.finish()
    };
    if let Err(e) = events::init() {
        t.fail("events-init", format_args!("{e:?}"));
        t.finish()
    }
    let (t0, t1) = (start_ms * 1_000_000, (start_ms + span_ms) * 1_000_000);
    let began = time::now_ns();
    if began >= t0 {
        t.fail(
            "start",
            format_args!("started at {began} ns, after the window's start {t0} ns: raise start="),
        );
        t.finish()
    }
    spin_until(t0);
    let r0 = running_ns();
    let at0 = time::now_ns();
    spin_until(t1);
    let r1 = running_ns();
    let at1 = time::now_ns();
    let (Some(r0), Some(r1)) = (r0, r1) else {
        t.fail("runstate", format_args!("vcpu_get_runstate_info failed"));
        t.finish()
    };
    let ran = r1.saturating_sub(r0);
    let window = t1 - t0;
    let share = ran * 1000 / window;
    // One decimal of per mille, for the report.
    let share10 = ran * 10_000 / window;
    let (lo, hi, what) = match modes {
        [Some(e), ..] => (
            e.saturating_sub(tol),
            e + tol,
            format!("expected {e} +- {tol}"),
        ),
        [_, Some(m), _] => (0, m + tol, format!("at most {m} + {tol}")),
        [.., Some(m)] => (
            m.saturating_sub(tol),
            u64::MAX,
            format!("at least {m} - {tol}"),
        ),
        _ => unreachable!(),
    };
    println!(
        "cpuhog {name}: ran {ran} ns of {window} ns: share {}.{} per mille ({what}); runstate read at {at0} and {at1} ns: running {r0} and {r1} ns",
        share10 / 10,
        share10 % 10
    );
    let ok = (lo..=hi).contains(&share);
    t.check(
        "share",
        ok,
        format_args!(
            "{name}: share {}.{} per mille, {}",
            share10 / 10,
            share10 % 10,
            what
        ),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
