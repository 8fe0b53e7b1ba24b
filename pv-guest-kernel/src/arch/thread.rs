//! The machine part of [`crate::thread`]: the context switch and the
//! initial frame of a new thread's stack.
//!
//! A suspended thread is only its stack pointer. Below it sit the six
//! registers the System V ABI makes callee-saved (`rbp`, `rbx`, `r12`-`r15`)
//! and a return address. Everything else is caller-saved, so the compiler has
//! already spilled it around the call to [`switch`]. There is no FPU or
//! vector state to save, because the guest is built soft-float.

use core::arch::global_asm;

global_asm!(
    r#"
    .text
    /* u64 pv_thread_switch(u64 next_rsp): save the callee-saved registers
       on the current stack, switch to next_rsp, restore its registers and
       return into it with rax = the stack pointer just saved. */
    .globl pv_thread_switch
pv_thread_switch:
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rax
    mov %rdi, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    ret

    /* A new thread's first return lands here, with rax = the previous
       thread's saved rsp. */
    .globl pv_thread_start
pv_thread_start:
    mov %rax, %rdi
    and $-16, %rsp
    call {entry}
    ud2
"#,
    entry = sym crate::thread::thread_entry,
    options(att_syntax)
);

unsafe extern "C" {
    fn pv_thread_switch(next_rsp: u64) -> u64;
    fn pv_thread_start();
}

/// Words in the initial frame: six callee-saved registers, then the return
/// address.
const FRAME_WORDS: usize = 7;

/// Writes a new thread's initial frame at the top of `stack` and returns the
/// stack pointer to give [`switch`]. The first switch to it pops zeroed
/// registers (so `rbp` = 0 ends backtraces) and returns into
/// `pv_thread_start`, which calls `crate::thread::thread_entry` on an
/// aligned stack.
pub(crate) fn initial_frame(stack: &mut [u8]) -> u64 {
    let base = stack.as_mut_ptr() as u64;
    let top = (base + stack.len() as u64) & !15;
    let rsp = top - 16 - 8 * (FRAME_WORDS as u64 - 1);
    let off = (rsp - base) as usize;
    let words = &mut stack[off..off + 8 * FRAME_WORDS];
    words.fill(0);
    let ret = pv_thread_start as *const () as u64;
    words[8 * (FRAME_WORDS - 1)..].copy_from_slice(&ret.to_le_bytes());
    rsp
}

/// Saves the current context and resumes the one saved at `next_rsp`.
/// Returns, once something switches back here, the stack pointer that the
/// context which switched back saved for itself.
///
/// # Safety
/// `next_rsp` must be a value returned by [`initial_frame`] for a stack that
/// has not been switched to yet, or the return value of a `switch` call
/// whose context has not been resumed since. That context's stack must
/// stay allocated until the context is switched away from for good.
pub(crate) unsafe fn switch(next_rsp: u64) -> u64 {
    // SAFETY: per the contract above, `next_rsp` holds a frame laid out as
    // pv_thread_switch pushes it (or as initial_frame writes it), on a live
    // stack. The routine preserves every callee-saved register of this
    // context, and the compiler treats the call as clobbering the rest.
    unsafe { pv_thread_switch(next_rsp) }
}
