//! examples/bare: a whole Xen x86_64 PV kernel on guest-abi alone, no guest
//! library. guest-abi's macros emit the ELF notes the domain builder reads
//! and the entry point (a static stack, then `kmain`); the rest is typed
//! hypercalls. It prints what start_info says, asks the hypervisor its
//! version, and powers off. The same image boots on real Xen as dom0.
#![no_std]
#![no_main]

use core::fmt::Write;
use guest_abi::hypercall::{console_write_str, sched_shutdown, xen_version_number};
use guest_abi::sched::ShutdownReason;
use guest_abi::start_info::StartInfo;
use guest_abi::types::until_nul_str;

guest_abi::xen_elfnotes! {
    guest_os: "bare",
    guest_version: "0.1",
    entry: _start,
}
guest_abi::pv_entry!(kmain);

/// The console: `console_io` writes, one formatted piece at a time.
struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        console_write_str(s).map_err(|_| core::fmt::Error)
    }
}

fn kmain(si: &'static StartInfo) -> ! {
    let magic = until_nul_str(&si.magic).unwrap_or("?");
    let _ = writeln!(Console, "bare: hello from a kernel on guest-abi alone");
    let _ = writeln!(Console, "bare: start_info {magic}, {} pages", si.nr_pages);
    if let Ok((major, minor)) = xen_version_number() {
        let _ = writeln!(Console, "bare: hypervisor interface {major}.{minor}");
    }
    let _ = writeln!(Console, "bare: powering off");
    off(ShutdownReason::Poweroff)
}

/// Shuts the domain down; a shutdown that returns is retried.
fn off(reason: ShutdownReason) -> ! {
    loop {
        let _ = sched_shutdown(reason);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(Console, "bare: panic: {info}");
    off(ShutdownReason::Crash)
}
