//! Entry and exit stubs: exceptions/interrupts (256 IDT stubs), `syscall`
//! from a guest (hypercalls), and the single return path to a guest. The
//! stubs save registers into the running vCPU's `TrapFrame` slot
//! (`arch::entry`; or, for hypercalls that never switch, only the
//! caller-saved ones on the hypervisor stack) and call safe Rust
//! (`crate::trap::on_trap`, `crate::hypercall::on_syscall`,
//! `crate::hypercall::on_light_syscall`); the only choice they make is
//! which of those entries a hypercall takes. Naming the dispatcher's
//! entries, this file is on the entry layer, above everything it calls
//! (docs/design.md, "Layers"); nothing uses it by path (`arch::entry`
//! reaches `return_to_guest` by its symbol).

use core::arch::global_asm;

// Vectors that push an error code themselves.
global_asm!(
    r#"
    /* The 15 general registers in TrapFrame order (r15 lowest). */
    .macro push_gprs
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
    .endm

    /* The six argument registers the light entry saves, rdi pushed first. */
    .macro pop_args
    pop %r10
    pop %r9
    pop %r8
    pop %rdx
    pop %rsi
    pop %rdi
    .endm

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
    push_gprs
    cld
    /* A guest may have set EFLAGS.AC, which interrupt gates keep: close
       SMAP again (clac exists only where SMAP does). */
    cmpb $0, {smap}(%rip)
    je 3f
    clac
3:  mov %rsp, %rdi
    testb $3, 18*8(%rsp)
    jz 4f
    /* From a guest: the hypervisor's GS base first (percpu). The CPU
       pushed at TSS.RSP0, the end of the vCPU's own frame, so the frame is
       complete in place; an IST vector (NMI, #DF, #MC) put it on its own
       stack: copy it over. Then run on the hypervisor stack. */
    swapgs
    cmp %gs:{off_current}, %rsp
    jne 7f
8:  mov %gs:{off_hv_top}, %rsp
    call {on_trap}
    jmp return_to_guest
7:  mov %rsp, %rsi
    mov %gs:{off_current}, %rdi
    mov $22, %ecx
    rep movsq
    mov %gs:{off_current}, %rdi
    jmp 8b
    /* From the hypervisor itself (a guest-copy fault, an interrupt while
       idle): handled and returned from on the stack it arrived on. */
4:  mov %rsp, %rbx
    call {on_trap}
    mov %rbx, %rsp
    jmp pop_frame

    .balign 16
    .globl syscall_entry
syscall_entry:
    /* Only ever from a guest (ring 3): the hypervisor's GS base first. */
    swapgs
    /* Hypercall number ~0 is the benchmark baseline: the shortest possible
       round trip, answering -ENOSYS like any unknown number. */
    cmp $-1, %rax
    jne 2f
    cmpb $0, %gs:{off_user_mode}
    je 1f
    /* Registers are saved into the running vCPU's own frame (its end is
       the per-CPU frame_top); Rust then runs on the hypervisor stack. */
2:  mov %rsp, %gs:{off_scratch}
    mov %gs:{off_frame_top}, %rsp
    pushq $0xe02b
    pushq %gs:{off_scratch}
    push %r11
    pushq $0xe033
    push %rcx
    /* The light entry: a hypercall from guest kernel mode that never
       switches vCPUs (LIGHT_HYPERCALLS) saves only what Rust may clobber,
       on the hypervisor stack; rbx, rbp and r12-r15 stay live in their
       registers. sched_op (the blocking and yielding one) is tested first. */
    cmp $29, %rax
    je 5f
    cmpb $0, %gs:{off_user_mode}
    jne 5f
    cmp ${nr_light}, %rax
    jae 5f
    lea {light}(%rip), %r11
    cmpb $0, (%r11,%rax)
    je 5f
    mov %gs:{off_hv_top}, %rsp
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
    pop_args
    /* Back to the iretq words in the frame; rcx and r11 hold rip and
       rflags after a syscall, as on the full path. */
    mov %gs:{off_frame_top}, %rsp
    sub $40, %rsp
    mov (%rsp), %rcx
    mov 16(%rsp), %r11
    swapgs
    iretq

    /* An event upcall is due: complete the frame (rax holds the result)
       and let Rust build the bounce. */
6:  pop_args
    mov %gs:{off_frame_top}, %rsp
    sub $40, %rsp
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
    mov %gs:{off_hv_top}, %rsp
    call {on_light_upcall}
    jmp return_to_guest

    /* The full entry: every register in the vCPU's TrapFrame. */
5:  pushq $0
    pushq $0x100
    push_gprs
    mov %rsp, %rdi
    movzbl %gs:{off_user_mode}, %esi
    mov %gs:{off_hv_top}, %rsp
    call {on_syscall}

    /* To whichever vCPU runs now: its frame is CURRENT_FRAME. */
    .globl return_to_guest
return_to_guest:
    mov %gs:{off_current}, %rsp
pop_frame:
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
    /* To ring 3: the guest's GS base back (to ring 0, the idle loop or an
       interrupted hypervisor, nothing to swap). */
    testb $3, 8(%rsp)
    jz 9f
    swapgs
9:  iretq

1:  mov $-38, %rax
    swapgs
    sysretq

    .balign 16
    .globl cstar_entry
cstar_entry:
    swapgs
    mov %rsp, %gs:{off_scratch}
    mov %gs:{off_frame_top}, %rsp
    pushq $0xe02b
    pushq %gs:{off_scratch}
    push %r11
    pushq $0xe023
    push %rcx
    pushq $0
    pushq $0x101
    /* trap_common swaps again for a ring-3 frame. */
    swapgs
    jmp trap_common
    .text
"#,
    on_trap = sym crate::trap::on_trap,
    on_syscall = sym crate::hypercall::on_syscall,
    on_light = sym crate::hypercall::on_light_syscall,
    on_light_upcall = sym crate::hypercall::on_light_upcall,
    light = sym crate::hypercall::LIGHT_HYPERCALLS,
    nr_light = const crate::hypercall::NR_LIGHT,
    off_scratch = const super::percpu::OFF_SYSCALL_SCRATCH,
    off_frame_top = const super::percpu::OFF_FRAME_TOP,
    off_current = const super::percpu::OFF_CURRENT_FRAME,
    off_hv_top = const super::percpu::OFF_HV_STACK_TOP,
    off_user_mode = const super::percpu::OFF_USER_MODE,
    smap = sym crate::mm::guest::SMAP,
    options(att_syntax)
);
