//! Hostile vCPU-state abuse, one attack per boot chosen by `op=`: returns
//! through HYPERVISOR_iret to a non-canonical RIP (XSA-7) or claiming ring 0,
//! `int $0x80` with no trap table (XSA-259), an exception whose bounce frame
//! cannot be written (on the current stack, or from guest user mode on a
//! stack_switch kernel stack in hypervisor space), and callbacks inside
//! hypervisor space. Each must end in an error code or in this domain alone
//! being killed.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_guest_kernel::{StartInfo, println, test::Reporter};

/// Enters the iret stub with a forged `[flags, rip, cs, rflags, rsp, ss]`.
fn forged_iret(rip: u64, cs: u64) -> ! {
    let page = pv_guest_kernel::arch::hypercall_page_addr();
    // SAFETY: deliberately hands the hypervisor a bad return context; the
    // hypervisor must kill this domain, so nothing after runs.
    unsafe {
        asm!(
            "mov rcx, rsp",
            "push 0xe02b",
            "push rcx",
            "push 0x202",
            "push rsi",
            "push rdi",
            "push 0",
            "jmp rdx",
            in("rsi") cs,
            in("rdi") rip,
            in("rdx") page + 23 * 32,
            options(noreturn)
        )
    }
}

/// The kernel stack `bad-kernel-stack-from-user` registers: hypervisor
/// space, so no bounce frame can go there.
const BAD_KERNEL_STACK: u64 = 0xffff_8000_0010_0000;

#[repr(C, align(16))]
struct Stack([u8; 4096]);
static mut USER_STACK: Stack = Stack([0; 4096]);

/// Guest user code: an exception, which must bounce to the kernel stack.
extern "C" fn user_ud2() -> ! {
    // SAFETY: raises #UD; control never comes back here.
    unsafe { asm!("ud2", options(noreturn)) }
}

fn main(si: &'static StartInfo) {
    let op = scenario_guests::arg(si, "op").unwrap_or("none");
    println!("hostile: {op}");
    let mut t = Reporter::new();
    match op {
        "iret-noncanonical" => forged_iret(0x8000_0000_0000_1000, 0xe033),
        "iret-ring0" => forged_iret(0x100000, 0xe008),
        "int80-no-handler" => unsafe { asm!("int 0x80") },
        "bad-bounce-stack" => {
            pv_guest_kernel::traps::init().expect("trap table");
            // SAFETY: moves the stack to an unmapped address and faults: the
            // hypervisor cannot write the bounce frame and must kill us.
            unsafe { asm!("mov rsp, {}", "ud2", in(reg) 0x7fff_0000_0000u64, options(noreturn)) }
        }
        "bad-kernel-stack-from-user" => {
            pv_guest_kernel::traps::init().expect("trap table");
            let l4 = pv_guest_kernel::mm::current_l4_mfn();
            // SAFETY: user mode runs only the faulting instruction below.
            unsafe { pv_guest_kernel::mm::mmuext(guest_abi::mmu::MMUEXT_NEW_USER_BASEPTR, l4, 0) }
                .expect("user page table");
            // SAFETY: a kernel stack the hypervisor can never write: the
            // #UD from user mode below must kill us, naming this stack.
            let r = unsafe { guest_abi::hypercall::stack_switch(0xe02b, BAD_KERNEL_STACK) };
            t.check("stack-switch", r.is_ok(), format_args!("{r:?}"));
            let usp = (&raw const USER_STACK) as u64 + 4096;
            println!("hostile: user stack {usp:#x}, kernel stack {BAD_KERNEL_STACK:#x}");
            pv_guest_kernel::traps::enter_user(user_ud2 as *const () as u64, usp)
        }
        "callbacks-in-hypervisor" => {
            for (ty, name) in [(0u16, "event"), (1, "failsafe"), (2, "syscall")] {
                let reg = guest_abi::callback::CallbackRegister {
                    type_: ty,
                    flags: 0,
                    _pad: 0,
                    address: 0xffff_8280_0010_0000,
                };
                // SAFETY: the hypervisor must refuse the address.
                let r = unsafe { guest_abi::hypercall::callback_register(&reg) };
                t.check(
                    name,
                    r == Err(guest_abi::errno::Errno::EINVAL),
                    format_args!("{name} callback in hypervisor space: {r:?}"),
                );
            }
            // SAFETY: as above, through the older hypercall.
            let r = unsafe { guest_abi::hypercall::set_callbacks(0xffff_8280_0010_0000, 0, 0) };
            t.check(
                "set-callbacks",
                r == Err(guest_abi::errno::Errno::EINVAL),
                format_args!("{r:?}"),
            );
            let bad = [
                guest_abi::arch::TrapInfo {
                    vector: 3,
                    flags: 3,
                    cs: 0xe030,
                    _pad: [0; 4],
                    address: 0x8000_0000_0000_0000,
                },
                guest_abi::arch::TrapInfo {
                    vector: 0,
                    flags: 0,
                    cs: 0,
                    _pad: [0; 4],
                    address: 0,
                },
            ];
            // SAFETY: the hypervisor must refuse the non-canonical handler.
            let r = unsafe { guest_abi::hypercall::set_trap_table(&bad) };
            t.check("trap-table-noncanonical", r.is_err(), format_args!("{r:?}"));
            t.finish()
        }
        _ => println!("hostile: unknown op"),
    }
    t.fail(
        "hostile-survived",
        format_args!("{op} did not end this domain"),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
