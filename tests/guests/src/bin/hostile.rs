//! Hostile vCPU-state abuse, one attack per boot chosen by `op=`: returns
//! through HYPERVISOR_iret to a non-canonical RIP (XSA-7) or claiming ring 0,
//! `int $0x80` with no trap table (XSA-259), an exception whose bounce frame
//! cannot be written (on the current stack, or from guest user mode on a
//! stack_switch kernel stack in hypervisor space), and callbacks inside
//! hypervisor space. Each must end in an error code or in this domain alone
//! being killed. `iret-guest-selector-ok` returns to user mode on a code
//! selector of its own GDT (0x33, as Linux's `__USER_CS`) and sees its user
//! code run; `iret-guest-selector` then makes that descriptor non-present,
//! yields (its vCPU is switched out and back with the selector its iret
//! named) and irets to it again, which must kill only this domain.
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

/// A present, DPL-3, readable 64-bit code segment and a writable DPL-3
/// data segment, at Linux's `__USER_CS` (index 6) and `__USER_DS` (5).
const CODE3: u64 = 0x00af_fa00_0000_ffff;
const DATA3: u64 = 0x00cf_f200_0000_ffff;
const USER_CS: u64 = 0x33;
const USER_DS: u64 = 0x2b;

/// The machine address of the GDT page and whether to go on past the
/// first user-mode entry (the hostile op).
static mut GDT_MA: u64 = 0;
static mut HOSTILE: bool = false;
static mut KERNEL_STACK: Stack = Stack([0; 4096]);

/// Guest user code reached through an own selector: reports with `ud2`.
extern "C" fn user_ud2_own_cs() -> ! {
    // SAFETY: raises #UD; control never comes back here.
    unsafe { asm!("ud2", options(noreturn)) }
}

/// `HYPERVISOR_iret` to user mode at `rip`, `rsp` on the GDT's own
/// selectors.
fn iret_own_selectors(rip: u64, rsp: u64) -> ! {
    let page = pv_guest_kernel::arch::hypercall_page_addr();
    // SAFETY: an iret frame [flags, rip, cs, rflags, rsp, ss] on the
    // current stack, then the iret stub, which never returns here.
    unsafe {
        asm!(
            "push {ss}",
            "push rsi",
            "push 0x202",
            "push {cs}",
            "push rdi",
            "push 0",
            "jmp rdx",
            ss = const USER_DS,
            cs = const USER_CS,
            in("rdi") rip,
            in("rsi") rsp,
            in("rdx") page + 23 * 32,
            options(noreturn)
        )
    }
}

/// #UD from the user code: it ran on our selector.
fn on_user_ud(f: &mut pv_guest_kernel::traps::TrapFrame) {
    let mut t = Reporter::new();
    // The ud2 comes right after the function's prologue.
    let at = f.rip.wrapping_sub(user_ud2_own_cs as *const () as u64);
    let ours = at < 16 && f.cs & 3 == 3;
    t.check(
        "iret-guest-cs-user-ran",
        ours,
        format_args!("#UD at {:#x} cs {:#x}", f.rip, f.cs),
    );
    // SAFETY: single vCPU; set before user mode was entered.
    if !unsafe { HOSTILE } {
        t.finish()
    }
    // SAFETY: our own GDT page, through the checked hypercall.
    let ma = unsafe { GDT_MA };
    let r = unsafe { guest_abi::hypercall::update_descriptor(ma + 6 * 8, CODE3 & !(1 << 47)) };
    t.check(
        "iret-guest-cs-made-not-present",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    let r = guest_abi::hypercall::sched_yield();
    t.check("iret-guest-cs-yielded", r.is_ok(), format_args!("{r:?}"));
    println!("hostile: iret to the non-present selector {USER_CS:#x}");
    let usp = (&raw const USER_STACK) as u64 + 4096;
    iret_own_selectors(user_ud2_own_cs as *const () as u64, usp)
}

/// Enters user mode on selectors of a GDT of our own.
fn own_selectors(t: &mut Reporter, hostile: bool) -> ! {
    pv_guest_kernel::traps::init().expect("trap table");
    pv_guest_kernel::traps::set_handler(6, on_user_ud);
    let (va, mfn) = pv_guest_kernel::mm::alloc_page().expect("a page");
    for (i, d) in [(5u64, DATA3), (6, CODE3)] {
        // SAFETY: our own pool page, still writable here.
        unsafe { core::ptr::write_volatile((va + i * 8) as *mut u64, d) };
    }
    scenario_guests::remap(va, (mfn << 12) | scenario_guests::pte::RO).expect("read-only");
    // SAFETY: the page holds a null, a data and a code descriptor.
    let r = unsafe { guest_abi::hypercall::set_gdt(&[mfn], 7) };
    t.check("iret-guest-cs-gdt", r.is_ok(), format_args!("{r:?}"));
    // SAFETY: single vCPU; read by the #UD handler.
    unsafe {
        GDT_MA = mfn << 12;
        HOSTILE = hostile;
    }
    let l4 = pv_guest_kernel::mm::current_l4_mfn();
    // SAFETY: user mode runs only the faulting instruction.
    unsafe { pv_guest_kernel::mm::mmuext(guest_abi::mmu::MMUEXT_NEW_USER_BASEPTR, l4, 0) }
        .expect("user page table");
    let ksp = (&raw const KERNEL_STACK) as u64 + 4096;
    // SAFETY: a kernel stack of our own for bounces from user mode.
    let r = unsafe { guest_abi::hypercall::stack_switch(0xe02b, ksp) };
    t.check("iret-guest-cs-stack", r.is_ok(), format_args!("{r:?}"));
    let usp = (&raw const USER_STACK) as u64 + 4096;
    iret_own_selectors(user_ud2_own_cs as *const () as u64, usp)
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
        "iret-guest-selector-ok" => own_selectors(&mut t, false),
        "iret-guest-selector" => own_selectors(&mut t, true),
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
