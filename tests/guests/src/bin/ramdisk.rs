//! Reads its boot module (the manifest's `ramdisk = FILE`) through
//! start_info, where Xen's toolstack puts it for a kernel without the
//! MOD_START_PFN note: mapped right after the kernel and before the p2m
//! list, `mod_start` its virtual address, `mod_len` its whole pages. The
//! file is `lines=N` lines `ramdisk line NNNN` (numbered from 0, 18 bytes
//! each); the bytes after them up to `mod_len` must be zero.
#![no_std]
#![no_main]

use guest_abi::start_info::SIF_MOD_START_PFN;
use pv_guest_kernel::{StartInfo, println, test::Reporter};
use scenario_guests::arg;

const LINE_LEN: u64 = 18;

/// Line `i` of the file.
fn line(i: u64) -> [u8; LINE_LEN as usize] {
    let mut l = *b"ramdisk line 0000\n";
    let mut n = i;
    for d in l[13..17].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    l
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let lines: u64 = arg(si, "lines").and_then(|v| v.parse().ok()).unwrap_or(0);
    let len = lines * LINE_LEN;
    println!(
        "ramdisk: mod_start {:#x} mod_len {:#x} flags {:#x} mfn_list {:#x}",
        si.mod_start, si.mod_len, si.flags, si.mfn_list
    );
    t.check(
        "mod-start-is-virtual",
        si.flags & SIF_MOD_START_PFN == 0,
        format_args!("flags {:#x}", si.flags),
    );
    let placed = si.mod_start != 0 && si.mod_start.is_multiple_of(4096);
    t.check(
        "mod-start-page-aligned",
        placed,
        format_args!("{:#x}", si.mod_start),
    );
    let whole = len.next_multiple_of(4096);
    t.check(
        "mod-len-whole-pages",
        lines > 0 && si.mod_len == whole,
        format_args!("{:#x}, the file is {len:#x} bytes", si.mod_len),
    );
    t.check(
        "p2m-list-follows-module",
        si.mod_start.checked_add(si.mod_len) == Some(si.mfn_list),
        format_args!("{:#x} + {:#x}", si.mod_start, si.mod_len),
    );
    if placed && si.mod_len == whole && lines > 0 {
        // SAFETY: the builder mapped the module's pages readable in the
        // initial mapping at [mod_start, mod_start + mod_len) (checked
        // above to be the span before the p2m list); nothing writes them.
        let bytes =
            unsafe { core::slice::from_raw_parts(si.mod_start as *const u8, si.mod_len as usize) };
        let bad = (0..lines).find(|&i| {
            let at = (i * LINE_LEN) as usize;
            bytes[at..at + LINE_LEN as usize] != line(i)
        });
        t.check(
            "lines-match",
            bad.is_none(),
            format_args!("line {bad:?} differs"),
        );
        let tail = &bytes[len as usize..];
        t.check(
            "zero-after-the-file",
            tail.iter().all(|&b| b == 0),
            format_args!("a non-zero byte in the last {} bytes", tail.len()),
        );
        println!(
            "ramdisk: {lines} lines checked, {} zero bytes after them",
            tail.len()
        );
    }
    t.finish()
}

pv_guest_kernel::main!(main);
