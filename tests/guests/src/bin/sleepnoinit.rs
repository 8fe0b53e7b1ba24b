//! `time::sleep` in a guest that never called `events::init` (what a
//! newcomer writes first): it used to block forever, the clock reading 0
//! with shared info unmapped; now it sets events up itself and returns
//! once the deadline has passed.
#![no_std]
#![no_main]

use pv_guest_kernel::{StartInfo, println, test::Reporter, time};

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let r = time::sleep(2_000_000);
    t.check("sleep-returns-ok", r.is_ok(), format_args!("{r:?}"));
    let t0 = time::now_ns();
    t.check("clock-runs", t0 > 0, format_args!("now_ns {t0}"));
    let _ = time::sleep(5_000_000);
    let t1 = time::now_ns();
    t.check(
        "slept-past-the-deadline",
        t1 >= t0 + 5_000_000,
        format_args!("{t0} -> {t1}"),
    );
    println!("sleepnoinit: done");
    t.finish()
}

pv_guest_kernel::main!(main);
