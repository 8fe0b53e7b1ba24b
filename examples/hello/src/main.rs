//! examples/hello: the smallest useful guest. Prints what start_info says
//! (domain flags, memory, page tables, command line), uses the heap, and
//! powers off.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::{string::String, vec::Vec};
use pv_guest_kernel::{StartInfo, println};

/// Prints a line, then lets the other domains run (so consoles interleave).
macro_rules! say {
    ($($t:tt)*) => {{
        println!($($t)*);
        let _ = guest_abi::hypercall::sched_yield();
    }};
}

fn main(si: &'static StartInfo) {
    let magic = guest_abi::types::until_nul_str(&si.magic).unwrap_or("?");
    let cmdline = guest_abi::types::until_nul_str(&si.cmd_line).unwrap_or("<not UTF-8>");
    say!("hello from a microvisor PV guest");
    say!(
        "start_info: magic {magic}, {} pages ({} KiB)",
        si.nr_pages,
        si.nr_pages * 4
    );
    say!(
        "start_info: flags {:#x}{}{}",
        si.flags,
        if si.flags & 1 != 0 { " privileged" } else { "" },
        if si.flags & 2 != 0 { " initdomain" } else { "" }
    );
    say!(
        "start_info: shared_info at machine address {:#x}",
        si.shared_info
    );
    say!(
        "start_info: page tables at {:#x} ({} frames), p2m list at {:#x}",
        si.pt_base,
        si.nr_pt_frames,
        si.mfn_list
    );
    // A domain no xenstored serves (Xen's dom0; here, any domain without a
    // service domain) finds store evtchn 0 and mfn 0, and console evtchn 0.
    say!(
        "start_info: store evtchn {} mfn {:#x}, console evtchn {} mfn {:#x}",
        si.store_evtchn,
        si.store_mfn,
        si.console.evtchn,
        si.console.mfn
    );
    say!("command line: {cmdline:?}");

    // The heap works: build something that needs it.
    let words: Vec<String> = cmdline.split_whitespace().map(String::from).collect();
    let squares: Vec<u64> = (1..=10u64).map(|i| i * i).collect();
    let sum: u64 = squares.iter().sum();
    say!(
        "heap: {} command-line words, sum of the first 10 squares = {sum}, {} bytes free",
        words.len(),
        pv_guest_kernel::heap::free()
    );
    say!("goodbye");
}

pv_guest_kernel::main!(main);
