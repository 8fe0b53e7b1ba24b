//! Boots the way an unmodified Xen PV kernel does, making every early call of
//! Xen's start of day in order: trap table, callback_op for all five callback
//! types (and set_callbacks), a read-only GDT page and set_gdt, stack_switch,
//! data segment loads, an emulated CR3 read and NEW_USER_BASEPTR,
//! forced-emulation CPUID, FS/GS base writes, the shared info mapping and
//! unmapping page 0. Then it takes an exception and returns through the iret
//! stub, enters guest user mode, and comes back through a system call.
//!
//! With `runstate_user` on its command line (scenario `runstate-user`,
//! beside a CPU-bound domain) it then registers a runstate area and spins
//! in guest user mode long enough to be preempted: the hypervisor cannot
//! write the area through the kernel page tables then, so the update waits
//! until the vCPU enters kernel mode (Xen's `need_update_runstate_area`),
//! and the area read first thing after the system call shows the runnable
//! time gained in user mode.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::callback::{self as cb, CallbackRegister};
use pv_guest_kernel::traps::{self, TrapFrame};
use pv_guest_kernel::{StartInfo, arch, mm, println, test::Reporter};

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut KERNEL_STACK: Stack = Stack([0; 16384]);
static mut USER_STACK: Stack = Stack([0; 16384]);

static SYSCALL_RAX: AtomicU64 = AtomicU64::new(0);
/// The runstate area as the system call found it (first thing in kernel
/// mode).
static AREA_AT_SYSCALL: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

#[repr(C, align(64))]
struct Area([u64; 6]);
static mut AREA: Area = Area([0; 6]);

fn area() -> [u64; 6] {
    // SAFETY: the hypervisor writes the area only while this vCPU is not
    // running guest code, and nothing else does; volatile reads.
    unsafe {
        let p = &raw const AREA.0;
        core::array::from_fn(|i| core::ptr::read_volatile((p as *const u64).add(i)))
    }
}

/// Turns of the user-mode spin (far longer than a scheduler slice beside a
/// CPU-bound domain).
const USER_SPINS: u64 = 100_000_000;
static SYSCALL_CS: AtomicU64 = AtomicU64::new(0);
static BP_HITS: AtomicU64 = AtomicU64::new(0);

fn on_bp(_f: &mut TrapFrame) {
    BP_HITS.fetch_add(1, Ordering::SeqCst);
}

/// The user-mode system call lands here (kernel mode, on the stack_switch
/// stack): record it and resume the kernel where it entered user mode.
fn on_syscall(f: &mut TrapFrame) {
    for (slot, v) in AREA_AT_SYSCALL.iter().zip(area()) {
        slot.store(v, Ordering::SeqCst);
    }
    SYSCALL_RAX.store(f.rax, Ordering::SeqCst);
    SYSCALL_CS.store(f.cs, Ordering::SeqCst);
    arch::traps::redirect_to_recovery(f);
}

/// Guest user code: make a system call.
extern "C" fn user_main() -> ! {
    // SAFETY: `syscall` from guest user mode enters the guest kernel's
    // syscall callback; control never comes back here.
    unsafe { asm!("mov rax, 0x5ca1", "syscall", "ud2", options(noreturn)) }
}

/// Guest user code: spin, then make a system call.
extern "C" fn user_spin() -> ! {
    for i in 0..USER_SPINS {
        core::hint::black_box(i);
    }
    // SAFETY: as `user_main`'s.
    unsafe { asm!("mov rax, 0x5ca2", "syscall", "ud2", options(noreturn)) }
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    // Trap table (cs 0xe030) and the event callback.
    t.check(
        "set-trap-table",
        traps::init().is_ok(),
        format_args!("failed"),
    );
    // callback_op for all five types; 32-bit ones are accepted, never used.
    let (event, failsafe, syscall) = traps::callback_stubs();
    for (ty, addr, name) in [
        (cb::CALLBACKTYPE_EVENT, event, "event"),
        (cb::CALLBACKTYPE_FAILSAFE, failsafe, "failsafe"),
        (cb::CALLBACKTYPE_SYSCALL, syscall, "syscall"),
        (cb::CALLBACKTYPE_SYSCALL32, syscall, "syscall32"),
        (cb::CALLBACKTYPE_SYSENTER, syscall, "sysenter"),
    ] {
        let reg = CallbackRegister {
            type_: ty,
            flags: if ty == 0 {
                cb::CALLBACKF_MASK_EVENTS
            } else {
                0
            },
            _pad: 0,
            address: addr,
        };
        // SAFETY: each address is one of the library's bounce-frame stubs.
        let r = unsafe { guest_abi::hypercall::callback_register(&reg) };
        t.check(
            name,
            r.is_ok(),
            format_args!("callback_op register {name}: {r:?}"),
        );
    }
    // SAFETY: the same stubs, through the older hypercall.
    let r = unsafe { guest_abi::hypercall::set_callbacks(event, failsafe, syscall) };
    t.check("set-callbacks", r.is_ok(), format_args!("{r:?}"));
    t.check(
        "syscall-handler",
        traps::set_syscall_handler(on_syscall).is_ok(),
        format_args!("failed"),
    );

    // A GDT page: one DPL-3 data descriptor at entry 1, mapped read-only.
    let (gdt_va, gdt_mfn) = mm::alloc_page().expect("a page");
    // SAFETY: our own pool page, still writable here.
    unsafe { core::ptr::write_volatile((gdt_va + 8) as *mut u64, 0x00cf_f200_0000_ffff) };
    // SAFETY: remaps our own page read-only.
    let r = unsafe {
        guest_abi::hypercall::update_va_mapping(
            gdt_va,
            (gdt_mfn << 12) | scenario_guests::pte::RO,
            guest_abi::mmu::UVMF_INVLPG,
        )
    };
    t.check("gdt-read-only", r.is_ok(), format_args!("{r:?}"));
    let frames = [gdt_mfn];
    // SAFETY: the frame holds only a null and a DPL-3 data descriptor.
    let r = unsafe { guest_abi::hypercall::set_gdt(&frames, 2) };
    t.check("set-gdt", r.is_ok(), format_args!("{r:?}"));
    let es: u16;
    // SAFETY: loads our own descriptor (index 1, RPL 3) into ES.
    unsafe { asm!("mov ax, 0x000b", "mov es, ax", "mov {0:x}, es", out(reg) es, out("ax") _) };
    t.check("own-selector", es == 0xb, format_args!("es {es:#x}"));

    // Kernel stack for bounces from user mode.
    let ksp = (&raw const KERNEL_STACK) as u64 + 16384;
    // SAFETY: the stack is ours and used for nothing else.
    let r = unsafe { guest_abi::hypercall::stack_switch(0xe02b, ksp) };
    t.check("stack-switch", r.is_ok(), format_args!("{r:?}"));
    // Flat data segments.
    // SAFETY: 0xe02b is Xen's flat ring-3 data selector.
    unsafe { asm!("mov ax, 0xe02b", "mov ds, ax", "mov es, ax", out("ax") _) };
    t.ok("segment-loads");
    // CR3 read, then the same tables as the user page table (as Mini-OS).
    let l4 = mm::current_l4_mfn();
    t.check(
        "new-user-baseptr",
        // SAFETY: the user page table is used only by user mode, which
        // this guest never enters.
        unsafe { mm::mmuext(guest_abi::mmu::MMUEXT_NEW_USER_BASEPTR, l4, 0) }.is_ok(),
        format_args!("failed"),
    );
    // Forced-emulation CPUID.
    let (a, b): (u32, u32);
    // SAFETY: ud2a; "xen"; cpuid, with rbx preserved around it.
    unsafe {
        asm!("mov {t:r}, rbx", ".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2", "xchg {t:r}, rbx",
            t = out(reg) b, inout("eax") 0x4000_0000u32 => a, inout("ecx") 0 => _, out("edx") _)
    };
    t.check(
        "cpuid",
        a >= 0x4000_0002 && b == u32::from_le_bytes(*b"XenV"),
        format_args!("{a:#x} {b:#x}"),
    );
    // FS and GS base writes.
    // SAFETY: emulated MSR writes of canonical bases.
    unsafe {
        asm!("wrmsr", in("ecx") 0xC000_0100u32, in("eax") 0x1000u32, in("edx") 0u32);
        asm!("wrmsr", in("ecx") 0xC000_0101u32, in("eax") 0x2000u32, in("edx") 0u32);
    }
    t.ok("fs-gs-base");
    // Shared info, then unmap page 0.
    t.check(
        "shared-info",
        pv_guest_kernel::events::init().is_ok(),
        format_args!("failed"),
    );
    // SAFETY: nothing of ours lives at page 0.
    let r = unsafe { guest_abi::hypercall::update_va_mapping(0, 0, guest_abi::mmu::UVMF_INVLPG) };
    t.check("unmap-page-0", r.is_ok(), format_args!("{r:?}"));

    // An exception, returning through the iret stub (the SDK's default for
    // kernel-mode returns is a plain iretq; the contract wants the stub).
    traps::set_iret_hypercall(true);
    traps::set_handler(3, on_bp);
    // SAFETY: int3 traps to on_bp.
    unsafe { asm!("int3") };
    t.check(
        "exception-iret",
        BP_HITS.load(Ordering::SeqCst) == 1,
        format_args!("{} hits", BP_HITS.load(Ordering::SeqCst)),
    );

    // Guest user mode and back through a system call.
    let usp = (&raw const USER_STACK) as u64 + 16384;
    let completed = arch::traps::try_call(|| traps::enter_user(user_main as *const () as u64, usp));
    let rax = SYSCALL_RAX.load(Ordering::SeqCst);
    let cs = SYSCALL_CS.load(Ordering::SeqCst);
    t.check(
        "user-mode-syscall",
        !completed && rax == 0x5ca1 && cs & 3 == 3,
        format_args!("completed {completed}, rax {rax:#x}, cs {cs:#x}"),
    );
    println!("xencompat: back in the kernel after a user-mode system call");
    if scenario_guests::cmdline(si).contains("runstate_user") {
        runstate_in_user_mode(&mut t, usp);
    }
    t.finish()
}

/// The runstate area's update that came due in guest user mode is written
/// when the vCPU enters kernel mode (see the module's documentation).
fn runstate_in_user_mode(t: &mut Reporter, usp: u64) {
    use guest_abi::hypercall as hc;
    let arg = guest_abi::vcpu::VcpuRegisterRunstateMemoryArea {
        addr: (&raw const AREA) as u64,
    };
    // SAFETY: the area is this guest's static, which only it reads.
    let r = unsafe { hc::vcpu_register_runstate_memory_area(pv_guest_kernel::VcpuId(0), &arg) };
    let before = area();
    let completed = arch::traps::try_call(|| traps::enter_user(user_spin as *const () as u64, usp));
    let at = AREA_AT_SYSCALL.each_ref().map(|a| a.load(Ordering::SeqCst));
    let info = hc::vcpu_get_runstate_info(pv_guest_kernel::VcpuId(0));
    println!(
        "xencompat: runstate area before user mode {before:x?}, at the system call {at:x?}; get_runstate_info {info:x?}"
    );
    let rax = SYSCALL_RAX.load(Ordering::SeqCst);
    // time[1]: runnable (preempted) time.
    t.check(
        "runstate-preempted-in-user-mode",
        r.is_ok() && !completed && rax == 0x5ca2 && info.is_ok_and(|i| i.time[1] > before[3]),
        format_args!("{r:?}, completed {completed}, rax {rax:#x}, {before:x?} -> {info:x?}"),
    );
    t.check(
        "runstate-written-on-kernel-entry",
        at[0] as u32 == 0 && at[3] > before[3],
        format_args!("{before:x?} -> {at:x?}"),
    );
    let arg = guest_abi::vcpu::VcpuRegisterRunstateMemoryArea { addr: 0 };
    // SAFETY: address 0 stops the updates.
    let _ = unsafe { hc::vcpu_register_runstate_memory_area(pv_guest_kernel::VcpuId(0), &arg) };
}

pv_guest_kernel::main!(main);
