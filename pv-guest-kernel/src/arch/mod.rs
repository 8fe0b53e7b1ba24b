//! The guest's machine-level pieces: the ELF notes that make the image a Xen
//! PV kernel, the hypercall page the hypervisor fills in, the entry point
//! (ring 3, `rsi` = start_info) and the boot stack. All of the library's
//! `unsafe` is here.

#[cfg(target_os = "none")]
use core::arch::global_asm;

pub mod mem;
pub mod shared;
pub mod thread;
pub mod traps;
pub mod vcpu;
use guest_abi::start_info::StartInfo;

/// A port handler (`fn(u32)`) stored as a word, read and written without a
/// lock (the event upcall reads it).
pub(crate) struct HandlerSlot(core::sync::atomic::AtomicUsize);

impl HandlerSlot {
    pub(crate) const fn empty() -> Self {
        Self(core::sync::atomic::AtomicUsize::new(0))
    }

    pub(crate) fn set(&self, h: Option<fn(u32)>) {
        self.0.store(
            h.map_or(0, |f| f as usize),
            core::sync::atomic::Ordering::Release,
        );
    }

    pub(crate) fn get(&self) -> Option<fn(u32)> {
        let bits = self.0.load(core::sync::atomic::Ordering::Acquire);
        // SAFETY: a non-zero value was stored by `set` from a `fn(u32)`, and
        // function pointers are never null; 0 means none.
        (bits != 0).then(|| unsafe { core::mem::transmute::<usize, fn(u32)>(bits) })
    }
}

/// Size of the boot stack the entry point switches to.
pub const STACK_SIZE: usize = 64 * 1024;

#[cfg(target_os = "none")]
global_asm!(
    r#"
    /* Xen ELF notes: GUEST_OS, GUEST_VERSION, XEN_VERSION, LOADER, ENTRY,
       HYPERCALL_PAGE. */
    .section .note.Xen, "a"
    .balign 4
    .long 4, 20, 6
    .asciz "Xen"
    .balign 4
    .asciz "microvisor-pv-guest"
    .balign 4
    .section .note.Xen, "a"
    .balign 4
    .long 4, 4, 7
    .asciz "Xen"
    .balign 4
    .asciz "0.1"
    .balign 4
    .section .note.Xen, "a"
    .balign 4
    .long 4, 8, 5
    .asciz "Xen"
    .balign 4
    .asciz "xen-3.0"
    .balign 4
    .section .note.Xen, "a"
    .balign 4
    .long 4, 8, 8
    .asciz "Xen"
    .balign 4
    .asciz "generic"
    .balign 4
    .section .note.Xen, "a"
    .balign 4
    .long 4, 8, 1
    .asciz "Xen"
    .balign 4
    .quad _start
    .balign 4
    .section .note.Xen, "a"
    .balign 4
    .long 4, 8, 2
    .asciz "Xen"
    .balign 4
    .quad hypercall_page
    .balign 4

    .section .text.hypercall_page, "ax"
    .balign 4096
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0xcc

    .section .bss
    .balign 16
pv_boot_stack:
    .space {stack}
pv_boot_stack_top:

    .section .text.entry, "ax"
    .globl _start
_start:
    lea pv_boot_stack_top(%rip), %rsp
    mov %rsi, %rdi
    xor %ebp, %ebp
    call {start}
    ud2
    .text
"#,
    stack = const STACK_SIZE,
    start = sym crate::rt::start,
    options(att_syntax)
);

/// Turns the `rsi` the hypervisor passed into a reference.
///
/// # Safety
/// Must be called only with the value the hypervisor put in `rsi` at entry,
/// which points at the start_info page it mapped (read/write, never
/// unmapped by this library).
pub unsafe fn start_info_from_entry(rsi: u64) -> &'static StartInfo {
    // SAFETY: per the contract above; StartInfo is plain old data and the page
    // is 4 KiB aligned, which satisfies its alignment.
    unsafe { &*(rsi as *const StartInfo) }
}

unsafe extern "C" {
    static hypercall_page: [u8; 4096];
}

/// Address of the hypercall page (stub `n` is at `+ 32 * n`).
pub fn hypercall_page_addr() -> u64 {
    (&raw const hypercall_page) as u64
}
