//! Port I/O instructions. Owns nothing else; callers decide which ports.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, val: u8) {
    // SAFETY: port output has no memory-safety effect on the hypervisor; the
    // ports used (COM1, the debug-exit device) are owned by the hypervisor.
    unsafe { asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes a 32-bit value to an I/O port.
pub fn outl(port: u16, val: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags)) }
}
