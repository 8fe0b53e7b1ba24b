//! Making an image a Xen x86_64 PV kernel: the ELF notes the domain builder
//! reads, an optional hypercall page, and a minimal entry point.
//!
//! A PV kernel is an ordinary `ET_EXEC` ELF image that carries `"Xen"` ELF
//! notes ([`crate::elfnote`]). The builder (the microvisor's, or Xen's libelf)
//! insists on `XEN_VERSION` = `xen-3.0` and `LOADER` = `generic`, and reads
//! `GUEST_OS`, `ENTRY`, `HYPERCALL_PAGE`, `VIRT_BASE` and the others when
//! present. At start of day the vCPU runs in guest kernel mode (ring 3) at the
//! entry address with `rsi` holding the virtual address of the
//! [`StartInfo`] page and `rsp` pointing into the
//! bootstrap mapping (a stack the kernel should leave at once).
//!
//! The macros here write that in a few lines:
//!
//! - [`xen_elfnotes!`](crate::xen_elfnotes): the notes every PV kernel needs,
//!   plus optional ones by key;
//! - [`xen_elfnote!`](crate::xen_elfnote): any single note (string, number
//!   or symbol address);
//! - [`hypercall_page!`](crate::hypercall_page): a page-aligned,
//!   `0xcc`-filled page named `hypercall_page` that the builder fills with
//!   call stubs, and its `HYPERCALL_PAGE` note (the wrappers of
//!   [`crate::hypercall`] issue `syscall` themselves, so only code that calls
//!   through the page needs it);
//! - [`pv_entry!`](crate::pv_entry): `_start`, which switches to a static
//!   stack and calls a Rust `fn(&'static StartInfo) -> !`.
//!
//! The sections they emit are the ones the SDK's linker script (`guest.ld`
//! beside this crate, exported to dependents' build scripts as
//! `DEP_GUEST_ABI_LDSCRIPT`) places: `.text.entry` first, then
//! `.text.hypercall_page` on its own page, and `.note.Xen` in a `PT_NOTE`
//! segment.
//!
//! A whole kernel on this crate alone (`examples/bare`). The `cfg_attr`s
//! and the `cfg` on the panic handler only let this example compile as a
//! host doctest too: a kernel crate writes plain `#![no_std]`,
//! `#![no_main]` and `#[panic_handler]`, as `examples/bare/src/main.rs` does
//! (docs/first-guest.md, "A crate made by hand", sets up the crate):
//!
//! ```no_run
//! # // Doctests build for the host, where std supplies the panic handler
//! # // and `main`: the freestanding build is the real one (examples/bare).
//! #![cfg_attr(target_os = "none", no_std)]
//! #![cfg_attr(target_os = "none", no_main)]
//! use guest_abi::hypercall::{console_write_str, sched_shutdown};
//! use guest_abi::sched::ShutdownReason;
//! use guest_abi::start_info::StartInfo;
//!
//! guest_abi::xen_elfnotes! {
//!     guest_os: "bare",
//!     guest_version: "0.1",
//!     entry: _start,
//! }
//! guest_abi::pv_entry!(kmain);
//!
//! fn kmain(si: &'static StartInfo) -> ! {
//!     let _ = console_write_str("hello from a bare PV kernel\n");
//!     let _ = si.nr_pages;
//!     loop {
//!         let _ = sched_shutdown(ShutdownReason::Poweroff);
//!     }
//! }
//!
//! #[cfg(target_os = "none")]
//! #[panic_handler]
//! fn panic(_: &core::panic::PanicInfo) -> ! {
//!     loop {
//!         let _ = sched_shutdown(ShutdownReason::Crash);
//!     }
//! }
//! # #[cfg(not(target_os = "none"))]
//! # fn main() {}
//! ```

use crate::start_info::StartInfo;

/// Size of the stack [`pv_entry!`](crate::pv_entry) switches to unless told
/// otherwise: 64 KiB.
pub const DEFAULT_STACK_SIZE: usize = 64 * 1024;

/// Whether `s` can be a string note written by
/// [`xen_elfnote!`](crate::xen_elfnote): printable ASCII without `"` or `\`
/// (the text goes into an assembler string as it is) and no NUL (the note
/// carries its own terminator). The macros check it at compile time.
#[must_use]
pub const fn is_plain_note_string(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c < 0x20 || c > 0x7e || c == b'"' || c == b'\\' {
            return false;
        }
        i += 1;
    }
    true
}

/// The `descsz` of a string note holding `s`: its bytes and the NUL.
#[must_use]
pub const fn string_note_descsz(s: &str) -> usize {
    s.len() + 1
}

/// Turns the `rsi` a PV vCPU starts with into the start_info reference.
///
/// [`pv_entry!`](crate::pv_entry) calls this once with its entry `rsi`.
///
/// # Safety
/// `rsi` must be the value the hypervisor put in `rsi` when it started this
/// vCPU: the virtual address of the start_info page, mapped read/write in
/// the initial address space. The caller must never unmap that page or
/// write it through another reference while the returned one is alive.
#[allow(unsafe_code)]
#[must_use]
pub unsafe fn start_info_from_entry(rsi: u64) -> &'static StartInfo {
    // SAFETY: per the contract above the address is mapped, the page is
    // 4 KiB aligned (more than StartInfo's alignment), and StartInfo is plain
    // old data valid for any bytes.
    unsafe { &*(rsi as *const StartInfo) }
}

/// Emits one Xen ELF note (owner `"Xen"`) into the `.note.Xen` section.
///
/// Three forms, by the kind of descriptor the note type takes
/// ([`crate::elfnote::is_string`]):
///
/// - `xen_elfnote!(TYPE, str "text")`: a NUL-terminated string (printable
///   ASCII without `"` or `\`, checked at compile time);
/// - `xen_elfnote!(TYPE, u64 EXPR)`: an 8-byte little-endian number (any
///   constant expression);
/// - `xen_elfnote!(TYPE, sym PATH)`: the 8-byte address of a Rust function
///   or static, resolved at link time;
/// - `xen_elfnote!(TYPE, symbol NAME)`: the same for a linker symbol that is
///   no Rust item, such as an assembly label (`_start` of
///   [`pv_entry!`](crate::pv_entry)) or a `#[no_mangle]` function.
///
/// `TYPE` is a constant expression, normally one of the
/// `guest_abi::elfnote::XEN_ELFNOTE_*` numbers.
///
/// ```
/// use guest_abi::elfnote::{XEN_ELFNOTE_FEATURES, XEN_ELFNOTE_PADDR_OFFSET};
/// guest_abi::xen_elfnote!(XEN_ELFNOTE_FEATURES, str "writable_page_tables");
/// guest_abi::xen_elfnote!(XEN_ELFNOTE_PADDR_OFFSET, u64 0);
/// # fn main() {}
/// ```
///
/// A string the assembler could misread is refused at compile time:
///
/// ```compile_fail
/// guest_abi::xen_elfnote!(guest_abi::elfnote::XEN_ELFNOTE_GUEST_OS, str "tab\there");
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! xen_elfnote {
    ($ty:expr, str $s:literal) => {
        const _: () = ::core::assert!(
            $crate::boot::is_plain_note_string($s),
            "a Xen string note must be printable ASCII without '\"' or '\\'"
        );
        ::core::arch::global_asm!(
            ".pushsection .note.Xen, \"a\", @note",
            ".balign 4",
            ".long 4, {descsz}, {ty}",
            ".asciz \"Xen\"",
            ".balign 4",
            ::core::concat!(".asciz \"", $s, "\""),
            ".balign 4",
            ".popsection",
            descsz = const $crate::boot::string_note_descsz($s),
            ty = const $ty,
        );
    };
    ($ty:expr, u64 $v:expr) => {
        ::core::arch::global_asm!(
            ".pushsection .note.Xen, \"a\", @note",
            ".balign 4",
            ".long 4, 8, {ty}",
            ".asciz \"Xen\"",
            ".balign 4",
            ".quad {v}",
            ".popsection",
            ty = const $ty,
            v = const { let v: u64 = $v; v },
        );
    };
    ($ty:expr, symbol $s:ident) => {
        ::core::arch::global_asm!(
            ".pushsection .note.Xen, \"a\", @note",
            ".balign 4",
            ".long 4, 8, {ty}",
            ".asciz \"Xen\"",
            ".balign 4",
            ::core::concat!(".quad ", ::core::stringify!($s)),
            ".popsection",
            ty = const $ty,
        );
    };
    ($ty:expr, sym $s:path) => {
        ::core::arch::global_asm!(
            ".pushsection .note.Xen, \"a\", @note",
            ".balign 4",
            ".long 4, 8, {ty}",
            ".asciz \"Xen\"",
            ".balign 4",
            ".quad {s}",
            ".popsection",
            ty = const $ty,
            s = sym $s,
        );
    };
}

/// Emits the ELF notes of a Xen x86_64 PV kernel.
///
/// Always: `GUEST_OS` (the one required key), `XEN_VERSION` = `"xen-3.0"` and
/// `LOADER` = `"generic"`. Then, in any order, any of these optional keys,
/// each adding its note:
///
/// | key | note | value |
/// |---|---|---|
/// | `guest_version: "1.0"` | `GUEST_VERSION` | string |
/// | `entry: NAME` | `ENTRY` | address of the linker symbol NAME, e.g. `_start` (default: the ELF entry point, `_start` with the SDK's linker script) |
/// | `hypercall_page: NAME` | `HYPERCALL_PAGE` | address of a page-aligned page (see [`hypercall_page!`](crate::hypercall_page), which emits this note itself) |
/// | `virt_base: 0` | `VIRT_BASE` | number: where the image's addresses start; 0 (the default) means virtual = pseudo-physical |
/// | `paddr_offset: 0` | `PADDR_OFFSET` | number (needs `virt_base`) |
/// | `features: "a\|!b"` | `FEATURES` | string: `XENFEAT_*` names, `!` = required |
/// | `suspend_cancel: 1` | `SUSPEND_CANCEL` | number |
///
/// ```no_run
/// #[unsafe(no_mangle)]
/// extern "C" fn kernel_entry() {}
/// guest_abi::xen_elfnotes! {
///     guest_os: "my-kernel",
///     guest_version: "0.1",
///     entry: kernel_entry,
///     virt_base: 0,
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! xen_elfnotes {
    (guest_os: $os:literal $(, $key:ident : $val:tt)* $(,)?) => {
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_GUEST_OS, str $os);
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_XEN_VERSION, str "xen-3.0");
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_LOADER, str "generic");
        $( $crate::__xen_elfnote_key!($key : $val); )*
    };
}

/// One optional key of [`xen_elfnotes!`](crate::xen_elfnotes).
#[doc(hidden)]
#[macro_export]
macro_rules! __xen_elfnote_key {
    (guest_version : $v:literal) => {
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_GUEST_VERSION, str $v);
    };
    (entry : $s:ident) => {
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_ENTRY, symbol $s);
    };
    (hypercall_page : $s:ident) => {
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_HYPERCALL_PAGE, symbol $s);
    };
    (virt_base : $v:tt) => {
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_VIRT_BASE, u64 $v);
    };
    (paddr_offset : $v:tt) => {
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_PADDR_OFFSET, u64 $v);
    };
    (features : $v:literal) => {
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_FEATURES, str $v);
    };
    (suspend_cancel : $v:tt) => {
        $crate::xen_elfnote!($crate::elfnote::XEN_ELFNOTE_SUSPEND_CANCEL, u64 $v);
    };
    ($other:ident : $v:tt) => {
        ::core::compile_error!(::core::concat!(
            "xen_elfnotes!: unknown key `",
            ::core::stringify!($other),
            "` (keys: guest_version, entry, hypercall_page, virt_base, paddr_offset, features, suspend_cancel)"
        ));
    };
}

/// Defines the hypercall page: a global symbol `hypercall_page`, one
/// page-aligned 4 KiB page filled with `int3` (`0xcc`) in section
/// `.text.hypercall_page`, and its `HYPERCALL_PAGE` note. The builder
/// overwrites it with 32-byte call stubs, stub `n` calling hypercall `n`.
///
/// Reach it from Rust with
/// `unsafe extern "C" { static hypercall_page: [u8; 4096]; }`.
#[macro_export]
macro_rules! hypercall_page {
    () => {
        ::core::arch::global_asm!(
            ".pushsection .text.hypercall_page, \"ax\", @progbits",
            ".balign 4096",
            ".globl hypercall_page",
            "hypercall_page:",
            ".fill 4096, 1, 0xcc",
            ".popsection",
            ".pushsection .note.Xen, \"a\", @note",
            ".balign 4",
            ".long 4, 8, {ty}",
            ".asciz \"Xen\"",
            ".balign 4",
            ".quad hypercall_page",
            ".popsection",
            ty = const $crate::elfnote::XEN_ELFNOTE_HYPERCALL_PAGE,
        );
    };
}

/// Defines the kernel's entry point `_start` (in section `.text.entry`): it
/// switches to a static, 16-byte aligned boot stack in `.bss` (default
/// [`DEFAULT_STACK_SIZE`]; `stack = BYTES` to choose), clears `rbp` (the end
/// of frame-pointer chains) and calls `MAIN(&'static StartInfo) -> !` with
/// the start_info page the hypervisor passed in `rsi`.
///
/// `pv_entry!(kmain);` or `pv_entry!(kmain, stack = 256 * 1024);` where
/// `fn kmain(si: &'static StartInfo) -> !`. Name the entry in the notes with
/// `entry: _start` (see [`xen_elfnotes!`](crate::xen_elfnotes)), or rely on
/// the ELF entry point.
///
/// Under the stack lies a page-aligned, page-sized guard,
/// `__guest_abi_boot_stack_guard` (a hidden global symbol). The builder
/// maps it like the rest of `.bss`; a kernel that unmaps it at start of day
/// (`update_va_mapping(guard, 0, UVMF_INVLPG)`, as pv-guest-kernel does)
/// makes a stack overflow fault there instead of writing over whatever
/// `.bss` precedes the stack. The fault cannot be delivered on the
/// overflowed stack, so the hypervisor ends the domain (the microvisor says
/// the stack overflowed; Xen crashes the domain from its bounce-frame code).
/// Reach it with
/// `unsafe extern "C" { static __guest_abi_boot_stack_guard: [u8; 4096]; }`.
#[macro_export]
macro_rules! pv_entry {
    ($main:path) => {
        $crate::pv_entry!($main, stack = $crate::boot::DEFAULT_STACK_SIZE);
    };
    ($main:path, stack = $size:expr) => {
        ::core::arch::global_asm!(
            ".pushsection .bss.guest_abi_boot_stack, \"aw\", @nobits",
            ".balign 4096",
            ".globl __guest_abi_boot_stack_guard",
            ".hidden __guest_abi_boot_stack_guard",
            "__guest_abi_boot_stack_guard:",
            ".space 4096",
            "__guest_abi_boot_stack:",
            ".space {size}",
            ".balign 16",
            "__guest_abi_boot_stack_top:",
            ".popsection",
            ".pushsection .text.entry, \"ax\", @progbits",
            ".globl _start",
            "_start:",
            "lea __guest_abi_boot_stack_top(%rip), %rsp",
            "mov %rsi, %rdi",
            "xor %ebp, %ebp",
            "call {enter}",
            "ud2",
            ".popsection",
            size = const { let s: usize = $size; s },
            enter = sym __guest_abi_enter,
            options(att_syntax),
        );

        /// Rust side of `_start`: `rsi` arrives as the first argument.
        extern "C" fn __guest_abi_enter(rsi: u64) -> ! {
            // SAFETY: `_start` passes the unchanged `rsi` the hypervisor
            // started this vCPU with, exactly once.
            let si = unsafe { $crate::boot::start_info_from_entry(rsi) };
            $main(si)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_note_strings() {
        assert!(is_plain_note_string("xen-3.0"));
        assert!(is_plain_note_string("microvisor-pv-guest"));
        assert!(is_plain_note_string(""));
        assert!(is_plain_note_string("a|!b"));
        assert!(!is_plain_note_string("say \"hi\""));
        assert!(!is_plain_note_string("back\\slash"));
        assert!(!is_plain_note_string("nul\0"));
        assert!(!is_plain_note_string("tab\t"));
        assert!(!is_plain_note_string("é"));
        assert_eq!(string_note_descsz("xen-3.0"), 8);
        assert_eq!(string_note_descsz(""), 1);
    }
}
