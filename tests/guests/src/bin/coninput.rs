//! coninput: reads a line from its console ring's `in` half, which the
//! service domain fills with what is typed on the serial console when this
//! guest is the one chosen for input (`console_input=NAME`).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use pv_guest_kernel::{StartInfo, mm, println, test::Reporter, time};

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    pv_guest_kernel::events::init().expect("events");
    let page = mm::mfn_to_pfn(si.console.mfn) * 4096;
    // SAFETY: our console page, mapped writable by the builder: `in` is
    // bytes 0..1024, `in_cons`/`in_prod` the u32s at 3072 and 3076.
    let (in_cons, in_prod) = unsafe {
        (
            AtomicU32::from_ptr((page + 3072) as *mut u32),
            AtomicU32::from_ptr((page + 3076) as *mut u32),
        )
    };
    println!("coninput: waiting for input");
    let mut line = heapless::Vec::<u8, 128>::new();
    let mut done = false;
    for _ in 0..3000 {
        let (mut c, p) = (
            in_cons.load(Ordering::SeqCst),
            in_prod.load(Ordering::SeqCst),
        );
        while c != p {
            // SAFETY: inside the `in` ring of our console page.
            let b = unsafe { core::ptr::read_volatile((page + u64::from(c % 1024)) as *const u8) };
            c = c.wrapping_add(1);
            if b == b'\n' || b == b'\r' {
                done = !line.is_empty();
            } else {
                let _ = line.push(b);
            }
        }
        in_cons.store(c, Ordering::SeqCst);
        if done {
            break;
        }
        let _ = time::sleep(10_000_000);
    }
    let text = core::str::from_utf8(&line).unwrap_or("?");
    println!("coninput: got '{text}'");
    t.check(
        "console-input",
        text == "hello from the serial console",
        format_args!("{text:?}"),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
