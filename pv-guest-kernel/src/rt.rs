//! Start of day and end of life: parses start_info, sets up the heap, calls
//! the guest's `main` (declared with [`crate::main!`]), and turns a panic into
//! a crash shutdown that carries the message.

use crate::heap;
use guest_abi::sched::ShutdownReason;
use guest_abi::start_info::StartInfo;

static mut START_INFO: Option<&'static StartInfo> = None;

/// The start_info page the hypervisor handed this guest.
pub fn start_info() -> &'static StartInfo {
    // SAFETY: written once in `start` before any other code of the guest runs;
    // the guest is single-threaded.
    unsafe { START_INFO }.expect("start_info is set before main runs")
}

unsafe extern "Rust" {
    /// The guest's main function, defined by `pv_guest_kernel::main!`.
    fn __pv_guest_main(si: &'static StartInfo);
}

/// Called by the entry stub (`_start`, from `guest_abi::pv_entry!`) with the
/// start_info page the hypervisor passed.
pub fn start(si: &'static StartInfo) -> ! {
    // SAFETY: single-threaded start of day; nothing has read START_INFO yet.
    unsafe { START_INFO = Some(si) };
    #[cfg(target_os = "none")]
    if let Err(e) = crate::mm::guard_boot_stack() {
        crate::println!("pv-guest-kernel: no guard page under the boot stack ({e})");
    }
    heap::init(si);
    // SAFETY: the symbol is defined by the `main!` macro with this signature.
    unsafe { __pv_guest_main(si) };
    shutdown(ShutdownReason::Poweroff)
}

/// Shuts the domain down with `reason`; never returns.
pub fn shutdown(reason: ShutdownReason) -> ! {
    loop {
        let _ = guest_abi::hypercall::sched_shutdown(reason);
    }
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match (heap::last_failure(), heap::try_state()) {
        // An allocation failure nobody handled: say what the heap had.
        (Some(n), Some((size, free))) => crate::println!(
            "guest panic: {} (heap exhausted: the last refused allocation was {n} bytes; the heap spans {size} bytes, {free} free, and cannot grow)",
            info
        ),
        _ => crate::println!("guest panic: {}", info),
    }
    shutdown(ShutdownReason::Crash)
}

/// Declares the guest's main function: `pv_guest_kernel::main!(my_main);`
/// where `fn my_main(si: &'static StartInfo)`. Returning powers the domain off.
#[macro_export]
macro_rules! main {
    ($f:path) => {
        #[unsafe(no_mangle)]
        fn __pv_guest_main(si: &'static $crate::StartInfo) {
            $f(si)
        }
    };
}
