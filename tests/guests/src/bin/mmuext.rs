//! mmuext_op and multicall from a guest: CLEAR_PAGE and COPY_PAGE on its own
//! frames, every TLB flush and INVLPG variant, a multicall of several
//! hypercalls with each result written back, and a multicall that an iret
//! entry ends early (XSA-213: the rest of the batch never runs).
#![no_std]
#![no_main]

use guest_abi::mmu::{MmuextOp, UVMF_INVLPG};
use guest_abi::multicall::MulticallEntry;
use pv_guest_kernel::{StartInfo, mm, test::Reporter};

fn ext(cmd: u32, arg1: u64, arg2: u64) -> Result<(), guest_abi::errno::Errno> {
    // SAFETY: the checks issue table operations on frames of their own and
    // flushes; none switches the address space this guest runs on.
    unsafe { mm::mmuext(cmd, arg1, arg2) }
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let (a, a_mfn) = mm::alloc_page().expect("page");
    let (b, b_mfn) = mm::alloc_page().expect("page");
    // SAFETY: both pool pages are ours and mapped writable.
    unsafe {
        core::ptr::write_bytes(a as *mut u8, 0x5a, 4096);
        core::ptr::write_bytes(b as *mut u8, 0x11, 4096);
    }
    let r = ext(guest_abi::mmu::MMUEXT_COPY_PAGE, b_mfn, a_mfn);
    // SAFETY: reading our own page.
    let copied = unsafe { core::slice::from_raw_parts(b as *const u8, 4096) }
        .iter()
        .all(|&x| x == 0x5a);
    t.check("copy-page", r.is_ok() && copied, format_args!("{r:?}"));
    let r = ext(guest_abi::mmu::MMUEXT_CLEAR_PAGE, a_mfn, 0);
    // SAFETY: reading our own page.
    let cleared = unsafe { core::slice::from_raw_parts(a as *const u8, 4096) }
        .iter()
        .all(|&x| x == 0);
    t.check("clear-page", r.is_ok() && cleared, format_args!("{r:?}"));
    let mask: u64 = 1;
    let flushes = [
        (guest_abi::mmu::MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
        (guest_abi::mmu::MMUEXT_INVLPG_LOCAL, a, 0),
        (
            guest_abi::mmu::MMUEXT_TLB_FLUSH_MULTI,
            0,
            &mask as *const u64 as u64,
        ),
        (
            guest_abi::mmu::MMUEXT_INVLPG_MULTI,
            a,
            &mask as *const u64 as u64,
        ),
        (guest_abi::mmu::MMUEXT_TLB_FLUSH_ALL, 0, 0),
        (guest_abi::mmu::MMUEXT_INVLPG_ALL, a, 0),
    ];
    let ok = flushes.iter().all(|&(c, x, y)| ext(c, x, y).is_ok());
    t.check("flush-variants", ok, format_args!("a flush op failed"));
    // A batch of several ops in one call, with *done.
    let ops = [
        MmuextOp {
            cmd: guest_abi::mmu::MMUEXT_TLB_FLUSH_LOCAL,
            _pad: 0,
            arg1: 0,
            arg2: 0,
        },
        MmuextOp {
            cmd: guest_abi::mmu::MMUEXT_CLEAR_PAGE,
            _pad: 0,
            arg1: b_mfn,
            arg2: 0,
        },
        MmuextOp {
            cmd: guest_abi::mmu::MMUEXT_INVLPG_LOCAL,
            _pad: 0,
            arg1: b,
            arg2: 0,
        },
    ];
    let mut done = 0u32;
    // SAFETY: operations on our own frames.
    let r = unsafe {
        guest_abi::hypercall::mmuext_op(
            &ops,
            Some(&mut done),
            guest_abi::types::DomId::SELF.0 as u32,
        )
    };
    t.check(
        "mmuext-batch",
        r.is_ok() && done == 3,
        format_args!("{r:?} done {done}"),
    );

    // multicall: xen_version, update_va_mapping (unmap a), xen_version.
    let mut calls = [
        MulticallEntry {
            op: 17,
            result: 0,
            args: [0; 6],
        },
        MulticallEntry {
            op: 14,
            result: 0,
            args: [a, 0, UVMF_INVLPG, 0, 0, 0],
        },
        MulticallEntry {
            op: 17,
            result: 0,
            args: [0; 6],
        },
    ];
    // SAFETY: the entries only query the version and unmap our own page.
    let r = unsafe { guest_abi::hypercall::multicall(&mut calls) };
    let v = calls[0].result;
    t.check(
        "multicall",
        r.is_ok()
            && v >> 16 >= 4
            && calls[1].result == 0
            && calls[2].result == v
            && mm::lookup(a) == 0,
        format_args!(
            "{r:?}, results {:#x} {:#x} {:#x}",
            calls[0].result, calls[1].result, calls[2].result
        ),
    );
    // An iret inside a multicall ends the batch there.
    let mut calls = [
        MulticallEntry {
            op: 17,
            result: 0x1111,
            args: [0; 6],
        },
        MulticallEntry {
            op: 23,
            result: 0x2222,
            args: [0; 6],
        },
        MulticallEntry {
            op: 17,
            result: 0x3333,
            args: [0; 6],
        },
    ];
    // SAFETY: the iret entry must be refused, never executed.
    let r = unsafe { guest_abi::hypercall::multicall(&mut calls) };
    let refused = calls[1].result as i64 == -(guest_abi::errno::Errno::EINVAL.0 as i64);
    t.check(
        "multicall-iret-ends-batch",
        r.is_ok() && calls[0].result >> 16 >= 4 && refused && calls[2].result == 0x3333,
        format_args!(
            "{r:?}, results {:#x} {:#x} {:#x}",
            calls[0].result, calls[1].result, calls[2].result
        ),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
