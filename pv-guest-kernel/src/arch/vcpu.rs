//! The machine-level part of secondary vCPUs: where a new vCPU starts (a
//! stub that aligns its stack and calls [`crate::smp`]'s Rust entry with
//! its number), and reading the running vCPU's number from its per-vCPU
//! block (the guest-kernel GS base each vCPU is given).

#[cfg(target_os = "none")]
use core::arch::global_asm;

#[cfg(target_os = "none")]
global_asm!(
    r#"
    .text
    /* A secondary vCPU's first instruction: rdi = its number (from the
       context's registers), rsp = its stack top. */
    .globl pv_vcpu_entry
pv_vcpu_entry:
    and $-16, %rsp
    call {start}
    ud2
"#,
    start = sym crate::smp::secondary_start,
    options(att_syntax)
);

#[cfg(target_os = "none")]
unsafe extern "C" {
    fn pv_vcpu_entry();
}

/// Address where a secondary vCPU starts.
#[cfg(target_os = "none")]
pub fn entry_address() -> u64 {
    pv_vcpu_entry as *const () as u64
}

/// Address where a secondary vCPU starts (host builds have none).
#[cfg(not(target_os = "none"))]
pub fn entry_address() -> u64 {
    0
}

/// The first word at the running vCPU's kernel GS base: its number, once
/// every vCPU has a per-vCPU block there ([`crate::smp::init`]).
#[cfg(target_os = "none")]
pub fn gs_word0() -> u64 {
    let v: u64;
    // SAFETY: called only after `smp::init`, when the GS base of every vCPU
    // points at its own per-vCPU block, whose first word is readable.
    unsafe {
        core::arch::asm!("mov %gs:0, {}", out(reg) v, options(att_syntax, nostack, readonly, preserves_flags))
    };
    v
}

/// Host builds: always vCPU 0.
#[cfg(not(target_os = "none"))]
pub fn gs_word0() -> u64 {
    0
}
