//! Port I/O instructions. Owns nothing else; callers decide which ports.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, val: u8) {
    // SAFETY: port output has no memory-safety effect on the hypervisor; the
    // ports used (COM1, the debug-exit device) are owned by the hypervisor.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes a 32-bit value to an I/O port.
pub fn outl(port: u16, val: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags))
    }
}

/// Reads 1, 2 or 4 bytes from an I/O port (for a guest with I/O privilege;
/// the caller has excluded the hypervisor's own ports).
pub fn in_width(port: u16, width: u16) -> u32 {
    let v: u32;
    // SAFETY: port input has no memory effect on the hypervisor; the caller
    // keeps the hypervisor's ports out of reach.
    unsafe {
        match width {
            1 => {
                let b: u8;
                asm!("in al, dx", in("dx") port, out("al") b, options(nomem, nostack, preserves_flags));
                v = b as u32;
            }
            2 => {
                let w: u16;
                asm!("in ax, dx", in("dx") port, out("ax") w, options(nomem, nostack, preserves_flags));
                v = w as u32;
            }
            _ => {
                asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
            }
        }
    }
    v
}

/// Writes 1, 2 or 4 bytes to an I/O port (see `in_width`).
pub fn out_width(port: u16, width: u16, val: u32) {
    // SAFETY: as for `in_width`.
    unsafe {
        match width {
            1 => {
                asm!("out dx, al", in("dx") port, in("al") val as u8, options(nomem, nostack, preserves_flags))
            }
            2 => {
                asm!("out dx, ax", in("dx") port, in("ax") val as u16, options(nomem, nostack, preserves_flags))
            }
            _ => {
                asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags))
            }
        }
    }
}
