//! Checks the slice's hypercalls from a guest: console_io (write, read, bad
//! pointers), xen_version queries, -ENOSYS for unimplemented numbers, and
//! sched_op argument errors. Ends with the shutdown reason named by
//! `reason=` (default poweroff).
#![no_std]
#![no_main]

use guest_abi::errno::Errno;
use guest_abi::hypercall::{self as hc, raw};
use pv_guest_kernel::{StartInfo, println, test::Reporter};

fn call3(nr: u64, a: u64, b: u64, c: u64) -> i64 {
    // SAFETY: the hypervisor must validate every argument; passing bad ones
    // is what this guest tests. No argument points at memory we rely on
    // except where noted.
    unsafe { raw::hypercall3(nr, a, b, c) }
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let efault = -(Errno::EFAULT.0 as i64);
    let enosys = -(Errno::ENOSYS.0 as i64);

    let msg = b"console write through a typed wrapper\n";
    t.check(
        "console-write",
        hc::console_io_write(msg) == Ok(msg.len()),
        format_args!("write did not return its length"),
    );
    for (name, ptr) in [
        ("unmapped", 0x7fff_0000_0000u64),
        ("hypervisor", 0xffff_8300_0000_0000),
        ("noncanonical", 0x8000_0000_0000_0000),
    ] {
        let r = call3(18, 0, 16, ptr);
        t.check(
            name,
            r == efault,
            format_args!("console_io write from a {name} pointer returned {r}, expected {efault}"),
        );
    }
    // A buffer whose second page is unmapped: nothing is printed, -EFAULT.
    // The bootstrap mapping ends at the 4 MiB boundary at or after the heap.
    let v_end = (pv_guest_kernel::heap::heap_start(si) + 512 * 1024).next_multiple_of(4 << 20);
    let r = call3(18, 0, 8192, v_end - 4096);
    t.check(
        "straddling",
        r == efault,
        format_args!("partly unmapped buffer returned {r}"),
    );
    // A 4-byte argument (EVTCHNOP_send's port) is read with one load: from
    // an unmapped page, hypervisor space, or straddling into an unmapped page.
    for (name, ptr) in [
        ("send-unmapped", 0x7fff_0000_0000u64),
        ("send-hypervisor", 0xffff_8300_0000_0000),
        ("send-straddling", v_end - 2),
    ] {
        let r = call3(32, 4, ptr, 0);
        t.check(
            name,
            r == efault,
            format_args!("EVTCHNOP_send from {ptr:#x} returned {r}, expected {efault}"),
        );
    }
    let mut buf = [0u8; 8];
    t.check(
        "console-read",
        hc::console_io_read(&mut buf) == Ok(0),
        format_args!("read did not return 0 bytes"),
    );

    match hc::xen_version_raw(0, None) {
        Ok(v) => t.check(
            "xen-version",
            v >> 16 >= 4,
            format_args!("version {:#x}", v),
        ),
        Err(e) => t.fail("xen-version", format_args!("{e:?}")),
    }
    let extra = hc::xen_extraversion();
    t.check("extraversion", extra.is_ok(), format_args!("{extra:?}"));
    let caps = hc::xen_capabilities();
    match caps {
        Ok(c) => t.check(
            "capabilities",
            c.starts_with(b"xen-3.0-x86_64"),
            format_args!("capabilities do not name xen-3.0-x86_64"),
        ),
        Err(e) => t.fail("capabilities", format_args!("{e:?}")),
    }
    t.check(
        "get-features",
        hc::xen_get_features(0).is_ok(),
        format_args!("get_features failed"),
    );
    let r = call3(17, 1, 0x7fff_0000_0000, 0);
    t.check(
        "version-bad-pointer",
        r == efault,
        format_args!("extraversion to a bad pointer returned {r}"),
    );

    for nr in [
        7u64,
        11,
        16,
        19,
        22,
        27,
        28,
        31,
        34,
        37,
        38,
        39,
        41,
        42,
        63,
        64,
        127,
        128,
        1000,
        u64::MAX,
    ] {
        let r = call3(nr, 0, 0, 0);
        if r != enosys {
            t.fail(
                "enosys",
                format_args!("hypercall {nr} returned {r}, expected {enosys}"),
            );
        }
    }
    t.ok("enosys");
    let r = call3(29, 99, 0, 0);
    t.check(
        "sched-unknown-cmd",
        r == enosys,
        format_args!("sched_op 99 returned {r}"),
    );
    let r = call3(29, 2, 0x7fff_0000_0000, 0);
    t.check(
        "shutdown-bad-pointer",
        r == efault,
        format_args!("shutdown with a bad pointer returned {r}"),
    );
    let bad: u32 = 77;
    let r = call3(29, 2, &bad as *const u32 as u64, 0);
    t.check(
        "shutdown-bad-reason",
        r == -(Errno::EINVAL.0 as i64),
        format_args!("shutdown reason 77 returned {r}"),
    );

    let reason = match scenario_guests::arg(si, "reason").unwrap_or("poweroff") {
        "reboot" => 1u32,
        "suspend" => 2,
        "crash" => 3,
        "watchdog" => 4,
        _ => 0,
    };
    if reason == 0 {
        t.finish()
    }
    // Report first, then end with the reason the manifest expects.
    let word = if t.verdict() == pv_guest_kernel::test::Verdict::Success {
        "SUCCESS"
    } else {
        "FAILURE"
    };
    println!("Test result: {word}");
    let r = call3(29, 2, &reason as *const u32 as u64, 0);
    println!("FAIL shutdown returned {r}");
    loop {
        core::hint::spin_loop();
    }
}

pv_guest_kernel::main!(main);
