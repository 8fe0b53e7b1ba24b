//! Exception entry for the guest kernel, Xen PV style: the hypervisor bounces
//! an exception onto the kernel stack as `[rcx, r11, (error), rip, cs,
//! rflags, rsp, ss]`; these stubs restore rcx/r11, save every register into a
//! [`TrapFrame`] and call Rust. Also the recovery trampoline behind
//! [`crate::traps::expect_fault`].
//!
//! The way back, as Mini-OS does it: to guest kernel mode (the saved `cs`
//! is the kernel's 64-bit selector with RPL 0, `ss` the flat one) the stub
//! restores the event mask the frame saved itself and returns without the
//! hypervisor: it writes rflags and rip just below the interrupted stack
//! pointer, restores every register, switches to that stack and runs
//! `popfq; ret` (ring 3 to ring 3; the virtual interrupt flag is the mask,
//! so popf leaving IF alone does not matter).
//! If that re-enables events and one is already pending, it masks them again
//! and runs the event handler on the same frame first, so nothing waits. An
//! event arriving after the check is bounced by the hypervisor below this
//! frame and handled before the `iretq` runs: none is lost, at the price of
//! one nested frame. To guest user mode (RPL 3), before the shared info page
//! is mapped, or when [`crate::traps::set_iret_hypercall`] asks for it, the
//! return goes through the iret hypercall stub, which restores the mask and
//! the mode itself.

use core::arch::global_asm;

/// Registers of an interrupted context, as the stubs save them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Exception vector (or 0x100 for an event upcall).
    pub vector: u64,
    /// Error code (0 when the exception has none).
    pub error_code: u64,
    pub rip: u64,
    /// Code selector; bits 32-39 hold the event mask saved at the bounce.
    pub cs: u64,
    /// Flags; IF mirrors the virtual interrupt flag at the bounce.
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
    /* Restores the 15 registers pv_trap_common saved (TrapFrame order). */
    .macro pop_gprs
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    .endm

    .macro pv_stub vec, err
    .globl pv_trap_\vec
pv_trap_\vec:
    pop %rcx
    pop %r11
    .if \err == 0
    pushq $0
    .endif
    pushq $\vec
    jmp pv_trap_common
    .endm

    .text
    pv_stub 0, 0
    pv_stub 1, 0
    pv_stub 3, 0
    pv_stub 4, 0
    pv_stub 5, 0
    pv_stub 6, 0
    pv_stub 7, 0
    pv_stub 9, 0
    pv_stub 10, 1
    pv_stub 11, 1
    pv_stub 12, 1
    pv_stub 13, 1
    pv_stub 14, 1
    pv_stub 15, 0
    pv_stub 16, 0
    pv_stub 17, 1
    pv_stub 19, 0
    pv_stub 0x80, 0
    pv_stub 0x100, 0
    pv_stub 0x102, 0
    pv_stub 0x103, 0

pv_trap_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    cld
    mov %rsp, %rdi
    mov %rsp, %rbx
    and $-16, %rsp
    call {handler}
    mov %rbx, %rsp
    /* TrapFrame offsets: vector 15*8, cs 18*8, rflags 19*8. */
    cmpb $0, {force_hc}(%rip)
    jne 9f
    cmpb $0, {mapped}(%rip)
    je 9f
    /* With several vCPUs the mask below is not necessarily this one's:
       the iret hypercall restores the right vCPU's. */
    cmpb $0, {smp_on}(%rip)
    jne 9f
    /* Only to the guest kernel's own 64-bit code and stack selectors. */
    cmpw $0xe030, 18*8(%rsp)
    jne 9f
    cmpw $0xe02b, 21*8(%rsp)
    jne 9f
7:  btl $9, 19*8(%rsp)
    jc 6f
    /* Events were masked in the interrupted context: masked they stay. */
    movb $1, {shared}+1(%rip)
    jmp 8f
6:  movb $0, {shared}+1(%rip)
    cmpb $0, {shared}(%rip)
    je 8f
    /* Already pending: mask again and handle it before returning. */
    movb $1, {shared}+1(%rip)
    movq $0x100, 15*8(%rsp)
    mov %rsp, %rdi
    and $-16, %rsp
    call {handler}
    mov %rbx, %rsp
    jmp 7b
    /* Put rflags and rip just below the interrupted rsp T (the kernel
       stack has no red zone; the bounce itself wrote below T), keep T - 16
       in the vector slot, restore every register, switch to T - 16, then
       popfq and ret. Not iretq: QEMU's TCG reads an iretq frame with
       supervisor accesses, which SMAP refuses on a guest stack. */
8:  mov 20*8(%rsp), %rcx
    mov 17*8(%rsp), %rax
    mov 19*8(%rsp), %rdx
    mov %rax, -8(%rcx)
    mov %rdx, -16(%rcx)
    sub $16, %rcx
    mov %rcx, 15*8(%rsp)
    pop_gprs
    mov (%rsp), %rsp
    popfq
    ret

9:  pop_gprs
    add $16, %rsp
    /* [rip, cs, rflags, rsp, ss]: push iret's flags word (0) and enter the
       iret stub, which never returns. */
    pushq $0
    jmp hypercall_page + 23 * 32

    .globl pv_try
pv_try:
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, {recovery}(%rip)
    mov %rdi, %rax
    mov %rsi, %rdi
    sub $8, %rsp
    call *%rax
    add $8, %rsp
    xor %eax, %eax
    jmp 1f
    .globl pv_try_recover
pv_try_recover:
    mov {recovery}(%rip), %rsp
    mov $1, %eax
1:  movq $0, {recovery}(%rip)
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    ret
"#,
    handler = sym crate::traps::dispatch,
    recovery = sym RECOVERY_RSP,
    force_hc = sym IRET_HYPERCALL,
    mapped = sym crate::arch::shared::MAPPED,
    smp_on = sym crate::smp::ON,
    shared = sym crate::arch::shared::SHARED_PAGE,
    options(att_syntax)
);

/// 1: every return goes through the iret hypercall (see the module docs).
#[unsafe(no_mangle)]
pub(crate) static IRET_HYPERCALL: core::sync::atomic::AtomicU8 =
    core::sync::atomic::AtomicU8::new(0);

/// Stack pointer to resume at when a fault hits inside `pv_try`; 0 = none.
#[unsafe(no_mangle)]
static mut RECOVERY_RSP: u64 = 0;

unsafe extern "C" {
    fn pv_trap_0();
    fn pv_trap_1();
    fn pv_trap_3();
    fn pv_trap_4();
    fn pv_trap_5();
    fn pv_trap_6();
    fn pv_trap_7();
    fn pv_trap_9();
    fn pv_trap_10();
    fn pv_trap_11();
    fn pv_trap_12();
    fn pv_trap_13();
    fn pv_trap_14();
    fn pv_trap_15();
    fn pv_trap_16();
    fn pv_trap_17();
    fn pv_trap_19();
    fn pv_trap_0x80();
    fn pv_trap_0x100();
    fn pv_trap_0x102();
    fn pv_trap_0x103();
    fn pv_try(thunk: extern "C" fn(*mut u8), ctx: *mut u8) -> u64;
    fn pv_try_recover();
}

/// How many exception stubs there are (every vector a 64-bit PV guest can
/// receive, as Mini-OS's trap table, plus `int $0x80`).
pub const STUBS: usize = 18;

/// Entry points of the exception stubs, by vector.
pub fn stubs() -> [(u8, u64); STUBS] {
    let a = |f: unsafe extern "C" fn()| f as *const () as u64;
    [
        (0, a(pv_trap_0)),
        (1, a(pv_trap_1)),
        (3, a(pv_trap_3)),
        (4, a(pv_trap_4)),
        (5, a(pv_trap_5)),
        (6, a(pv_trap_6)),
        (7, a(pv_trap_7)),
        (9, a(pv_trap_9)),
        (10, a(pv_trap_10)),
        (11, a(pv_trap_11)),
        (12, a(pv_trap_12)),
        (13, a(pv_trap_13)),
        (14, a(pv_trap_14)),
        (15, a(pv_trap_15)),
        (16, a(pv_trap_16)),
        (17, a(pv_trap_17)),
        (19, a(pv_trap_19)),
        (0x80, a(pv_trap_0x80)),
    ]
}

/// Entry point of the event-upcall stub.
pub fn event_stub() -> u64 {
    pv_trap_0x100 as *const () as u64
}

/// Entry point of the system-call callback stub (vector 0x102 in frames).
pub fn syscall_stub() -> u64 {
    pv_trap_0x102 as *const () as u64
}

/// Entry point of the failsafe callback stub (vector 0x103 in frames).
pub fn failsafe_stub() -> u64 {
    pv_trap_0x103 as *const () as u64
}

/// Leaves the guest kernel for guest user mode at `rip` with stack `rsp`
/// through HYPERVISOR_iret (cs 0xe033 with RPL 3, events enabled). Needs a
/// user page table (MMUEXT_NEW_USER_BASEPTR) and a kernel stack for the
/// way back (stack_switch).
pub fn enter_user(rip: u64, rsp: u64) -> ! {
    let page = super::hypercall_page_addr();
    // SAFETY: builds an iret frame [flags, rip, cs, rflags, rsp, ss] on the
    // current stack and jumps to the iret stub, which never returns here.
    unsafe {
        core::arch::asm!(
            "push 0xe02b",
            "push rsi",
            "push 0x202",
            "push 0xe033",
            "push rdi",
            "push 0",
            "jmp rdx",
            in("rdi") rip,
            in("rsi") rsp,
            in("rdx") page + 23 * 32,
            options(noreturn)
        )
    }
}

/// Whether a fault now would be recovered by `try_call`.
pub fn recovery_armed() -> bool {
    // SAFETY: single-threaded guest; plain read of a word.
    unsafe { RECOVERY_RSP != 0 }
}

/// Redirects an interrupted context to the recovery point of `try_call`.
pub fn redirect_to_recovery(frame: &mut TrapFrame) {
    // SAFETY: single-threaded guest; plain read of a word.
    frame.rsp = unsafe { RECOVERY_RSP };
    frame.rip = pv_try_recover as *const () as u64;
    // Resume in guest kernel mode (RPL 0 in the saved cs), whatever mode
    // the fault came from.
    frame.cs = (frame.cs & !0xffff) | 0xe030;
}

/// Runs `f`; returns true if it completed, false if a fault was recovered.
pub fn try_call<F: FnOnce()>(f: F) -> bool {
    extern "C" fn thunk<F: FnOnce()>(ctx: *mut u8) {
        // SAFETY: `ctx` is the `Option<F>` below, alive for this call.
        let slot = unsafe { &mut *(ctx as *mut Option<F>) };
        if let Some(f) = slot.take() {
            f();
        }
    }
    let mut slot = Some(f);
    // SAFETY: pv_try saves the callee-saved registers and stack pointer,
    // calls the thunk, and on a recovered fault resumes with them restored;
    // the closure's state lives in `slot` on this frame, which outlives the
    // call. A closure interrupted by a fault is abandoned without unwinding
    // (its destructors do not run).
    unsafe { pv_try(thunk::<F>, (&raw mut slot) as *mut u8) == 0 }
}
