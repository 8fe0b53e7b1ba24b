//! I/O privilege: a privileged domain raises its virtual IOPL with
//! PHYSDEVOP_set_iopl and then has in/out emulated (the hypervisor's own
//! ports stay out of reach: #GP); an unprivileged domain is refused.
#![no_std]
#![no_main]

use core::arch::asm;
use guest_abi::errno::Errno;
use pv_guest_kernel::traps::expect_fault;
use pv_guest_kernel::{println, test::Reporter, StartInfo};

fn set_iopl(level: u32) -> i64 {
    let arg = level;
    // SAFETY: PHYSDEVOP_set_iopl reads one u32.
    unsafe { guest_abi::hypercall::raw::hypercall2(33, 6, &arg as *const u32 as u64) }
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let _ = pv_guest_kernel::traps::init();
    if si.flags & 1 == 0 {
        let r = set_iopl(1);
        t.check("set-iopl-refused", r == -(Errno::EPERM.0 as i64), format_args!("{r}"));
        t.finish()
    }
    let r = set_iopl(1);
    t.check("set-iopl", r == 0, format_args!("{r}"));
    // SAFETY: port 0x80 is the POST diagnostic port: writing it is harmless.
    let f = expect_fault(|| unsafe { asm!("out 0x80, al", in("al") 0x42u8) });
    t.check("out-emulated", f.is_none(), format_args!("{f:?}"));
    let mut v = 0u8;
    // SAFETY: reading an unclaimed port returns all ones.
    let f = expect_fault(|| unsafe { asm!("in al, dx", in("dx") 0x80u16, out("al") v) });
    t.check("in-emulated", f.is_none(), format_args!("{f:?} value {v:#x}"));
    println!("iopriv: port 0x80 read {v:#x}");
    // The hypervisor's UART is never a guest's, privilege or not.
    // SAFETY: must fault (#GP delivered to our handler).
    let f = expect_fault(|| unsafe { asm!("in al, dx", in("dx") 0x3fdu16, out("al") _) });
    t.check("hv-port-refused", f.map(|f| f.vector) == Some(13), format_args!("{f:?}"));
    t.finish()
}

pv_guest_kernel::main!(main);
