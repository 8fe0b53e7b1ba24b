//! Port I/O. A port is reached only through a [`Port`], the token that
//! says whose it is: one of the hypervisor's own devices (the named
//! constants), or a port a guest may use (`Port::for_guest`, which asks
//! `microvisor_core::pv::port_permitted`). So no caller can reach, say, the
//! PCI configuration ports or the interrupt controllers by passing a
//! number: the raw instructions below are private.
//!
//! The instructions are the `x86_64` crate's (`PortRead`/`PortWrite`, one
//! `in`/`out` each, as `instructions::port::Port` uses them); the crate's
//! `Port` type is not used because anyone may make one from a number, which
//! is what this module's token exists to prevent.

use x86_64::instructions::port::{PortRead, PortWrite};

/// An I/O port someone may use (see the module).
#[derive(Clone, Copy)]
pub struct Port(u16);

impl Port {
    /// COM1's register `reg` (0..8), the hypervisor's serial console.
    pub const fn com1(reg: u16) -> Port {
        Port(0x3f8 + (reg & 7))
    }
    /// The legacy PICs' mask registers (masked at boot, never unmasked).
    pub const PIC1_MASK: Port = Port(0x21);
    pub const PIC2_MASK: Port = Port(0xa1);
    /// The CMOS RTC's index and data registers (read once at boot).
    pub const CMOS_INDEX: Port = Port(0x70);
    pub const CMOS_DATA: Port = Port(0x71);
    /// QEMU's isa-debug-exit device.
    pub const DEBUG_EXIT: Port = Port(0xf4);

    /// The PIT's channel 2 and mode ports and system port B (0x61), which
    /// the hypervisor never uses: reached only for the privileged domain's
    /// accesses Xen passes to the hardware
    /// (`microvisor_core::pv::hwdom_port_byte`).
    pub fn pit_for_hwdom(port: u16) -> Option<Port> {
        use microvisor_core::pv::{PIT_CH2, PIT_MODE, SYSTEM_PORT_B};
        matches!(port, PIT_CH2 | PIT_MODE | SYSTEM_PORT_B).then_some(Port(port))
    }

    /// Port `port` for an access of `width` bytes by a domain (privileged
    /// or not), if Xen's permissions let it through (never one of the
    /// hypervisor's own ports).
    pub fn for_guest(privileged: bool, port: u16, width: u16) -> Option<Port> {
        microvisor_core::pv::port_permitted(privileged, port, width).then_some(Port(port))
    }

    /// Writes a byte.
    pub fn outb(self, val: u8) {
        out_width(self.0, 1, u32::from(val));
    }

    /// Reads a byte.
    pub fn inb(self) -> u8 {
        in_width(self.0, 1) as u8
    }

    /// Writes a 32-bit value.
    pub fn outl(self, val: u32) {
        out_width(self.0, 4, val);
    }

    /// Reads 1, 2 or 4 bytes.
    pub fn read(self, width: u16) -> u32 {
        in_width(self.0, width)
    }

    /// Writes 1, 2 or 4 bytes.
    pub fn write(self, width: u16, val: u32) {
        out_width(self.0, width, val);
    }
}

/// Reads 1, 2 or 4 bytes from an I/O port.
fn in_width(port: u16, width: u16) -> u32 {
    // SAFETY: port input touches no memory; `port` came from a `Port`,
    // which only this module makes (the hypervisor's devices, or a port
    // the policy gives a guest).
    unsafe {
        match width {
            1 => u32::from(u8::read_from_port(port)),
            2 => u32::from(u16::read_from_port(port)),
            _ => u32::read_from_port(port),
        }
    }
}

/// Writes 1, 2 or 4 bytes to an I/O port.
fn out_width(port: u16, width: u16, val: u32) {
    // SAFETY: as for `in_width`: a port a `Port` vouches for.
    unsafe {
        match width {
            1 => u8::write_to_port(port, val as u8),
            2 => u16::write_to_port(port, val as u16),
            _ => u32::write_to_port(port, val),
        }
    }
}
