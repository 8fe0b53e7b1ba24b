//! Entry and exit stubs: exceptions/interrupts (256 IDT stubs), `syscall`
//! from a guest (hypercalls), and the single return path to a guest. The
//! stubs only save registers into a `TrapFrame` on the hypervisor stack and
//! call safe Rust (`crate::trap::on_trap`, `crate::hypercall::on_syscall`);
//! they never make decisions.

use core::arch::global_asm;

/// Saved guest (or hypervisor) state, exactly as the stubs lay it out on the
/// stack, lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
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
    /// Vector number; 0x100 for a 64-bit `syscall`, 0x101 for a 32-bit one.
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Copies a whole frame with one `rep movsq` (a vCPU switch copies two:
/// the compiler's memcpy took half as many instructions again).
#[inline]
pub fn copy_frame(dst: &mut TrapFrame, src: &TrapFrame) {
    const WORDS: usize = core::mem::size_of::<TrapFrame>() / 8;
    const _: () = assert!(core::mem::size_of::<TrapFrame>() % 8 == 0);
    // SAFETY: both are valid, distinct `TrapFrame`s (a `&mut` and a `&`
    // cannot overlap), each WORDS quadwords long; the direction flag is
    // clear in the hypervisor (the entry stubs' cld, FMASK on syscall).
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rcx") WORDS => _,
            inout("rdi") dst as *mut TrapFrame => _,
            inout("rsi") src as *const TrapFrame => _,
            options(nostack, preserves_flags)
        );
    }
}

/// Pseudo-vector recorded for a compatibility-mode `syscall` entry.
pub const SYSCALL32_VECTOR: u64 = 0x101;

impl TrapFrame {
    /// True when the frame was interrupted in ring 3 (a guest).
    pub fn from_guest(&self) -> bool {
        self.cs & 3 == 3
    }
}

// Vectors that push an error code themselves.
global_asm!(
    r#"
    .section .text.entry, "ax"
    .balign 16
    .globl trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec
    .else
    pushq $0
    pushq $vec
    .endif
    jmp trap_common
    .set vec, vec + 1
    .endr

trap_common:
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
    /* A guest may have set EFLAGS.AC, which interrupt gates keep: close
       SMAP again (clac exists only where SMAP does). */
    cmpb $0, {smap}(%rip)
    je 3f
    clac
3:  mov %rsp, %rdi
    call {on_trap}
    jmp return_to_guest

    .balign 16
    .globl syscall_entry
syscall_entry:
    /* Hypercall number ~0 is the benchmark baseline: the shortest possible
       round trip, answering -ENOSYS like any unknown number. */
    cmp $-1, %rax
    jne 2f
    cmpb $0, {user_mode}(%rip)
    je 1f
2:  mov %rsp, {scratch}(%rip)
    mov {stack_top}(%rip), %rsp
    pushq $0xe02b
    pushq {scratch}(%rip)
    push %r11
    pushq $0xe033
    push %rcx
    /* The light entry: a hypercall from guest kernel mode that never
       switches vCPUs (LIGHT_HYPERCALLS) saves only what Rust may clobber;
       rbx, rbp and r12-r15 stay live in their registers. */
    cmpb $0, {user_mode}(%rip)
    jne 5f
    cmp ${nr_light}, %rax
    jae 5f
    lea {light}(%rip), %r11
    cmpb $0, (%r11,%rax)
    je 5f
    push %rdi
    push %rsi
    push %rdx
    push %r8
    push %r9
    push %r10
    mov %r10, %rcx
    mov %rax, %r9
    call {on_light}
    test %rdx, %rdx
    jnz 6f
    pop %r10
    pop %r9
    pop %r8
    pop %rdx
    pop %rsi
    pop %rdi
    /* rcx and r11 hold rip and rflags after a syscall, as on the full path. */
    mov (%rsp), %rcx
    mov 16(%rsp), %r11
    iretq

    /* An event upcall is due: complete the frame (rax holds the result)
       and let Rust build the bounce. */
6:  pop %r10
    pop %r9
    pop %r8
    pop %rdx
    pop %rsi
    pop %rdi
    pushq $0
    pushq $0x100
    push %rax
    push %rbx
    pushq 32(%rsp)
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    pushq 0x70(%rsp)
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    call {on_light_upcall}
    jmp return_to_guest

    /* The full entry: every register in a TrapFrame. */
5:  pushq $0
    pushq $0x100
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
    mov %rsp, %rdi
    call {on_syscall}

    .globl return_to_guest
return_to_guest:
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
    add $16, %rsp
    iretq

1:  mov $-38, %rax
    sysretq

    .balign 16
    .globl cstar_entry
cstar_entry:
    mov %rsp, {scratch}(%rip)
    mov {stack_top}(%rip), %rsp
    pushq $0xe02b
    pushq {scratch}(%rip)
    push %r11
    pushq $0xe023
    push %rcx
    pushq $0
    pushq $0x101
    jmp trap_common
    .text
"#,
    on_trap = sym crate::trap::on_trap,
    on_syscall = sym crate::hypercall::on_syscall,
    on_light = sym crate::hypercall::on_light_syscall,
    on_light_upcall = sym crate::hypercall::on_light_upcall,
    light = sym crate::hypercall::LIGHT_HYPERCALLS,
    nr_light = const crate::hypercall::NR_LIGHT,
    scratch = sym SYSCALL_SCRATCH,
    stack_top = sym SYSCALL_STACK_TOP,
    user_mode = sym GUEST_USER_MODE,
    smap = sym crate::mm::guest::SMAP,
    options(att_syntax)
);

/// 1 while the running vCPU is in guest user mode: its `syscall` is the
/// guest kernel's, never a hypercall, so the baseline shortcut is skipped.
#[unsafe(no_mangle)]
pub static GUEST_USER_MODE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Guest rsp parked by the syscall stub while it switches stacks.
#[unsafe(no_mangle)]
static mut SYSCALL_SCRATCH: u64 = 0;
/// The hypervisor stack top the syscall stub switches to (= TSS.RSP0).
#[unsafe(no_mangle)]
pub static mut SYSCALL_STACK_TOP: u64 = 0;

unsafe extern "C" {
    fn return_to_guest() -> !;
}

/// Starts running a guest from a prepared frame: copies it to the top of the
/// hypervisor stack and takes the common exit path.
pub fn enter_guest(frame: &TrapFrame) -> ! {
    let top = super::desc::hv_stack_top();
    let dst = top - core::mem::size_of::<TrapFrame>() as u64;
    // SAFETY: `dst` is the top of the hypervisor stack, which holds no live
    // data when this is called (boot code runs on the separate boot stack);
    // the exit path pops exactly one TrapFrame from it and irets. The frame
    // was built by the domain builder or scheduler with a ring-3 cs/ss.
    unsafe {
        core::ptr::write(dst as *mut TrapFrame, *frame);
        core::arch::asm!("mov rsp, {}", "jmp {}", in(reg) dst, sym return_to_guest, options(noreturn));
    }
}
