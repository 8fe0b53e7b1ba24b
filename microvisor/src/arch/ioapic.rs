//! The I/O APICs, which route device interrupt lines (GSIs) to vectors of
//! the local APIC. QEMU's microvm machine has one at 0xFEC00000 (GSIs
//! 0-23) and, with ACPI (its default), a second at 0xFEC10000 (GSIs 24-47,
//! where its virtio-mmio transports are wired, level-triggered, active
//! high). GSI `g` is delivered as vector [`VECTOR_BASE`]` + g` to the boot
//! CPU. Every line starts masked; `irq` unmasks the ones a domain binds.

use crate::mm::paging;
use core::sync::atomic::{AtomicU32, Ordering};

const REGSEL: u64 = 0x00;
const WIN: u64 = 0x10;
/// First vector used for device interrupts.
pub const VECTOR_BASE: u8 = 0x30;
/// GSIs that can be routed (two I/O APICs of 24 lines).
pub const NR_GSIS: u32 = 48;
/// Machine frames of the I/O APICs (kept from every guest).
pub const FRAMES: [u64; 2] = [0xFEC00, 0xFEC10];
const VA: [u64; 2] = [
    crate::arch::apic::APIC_VA + 0x1000,
    crate::arch::apic::APIC_VA + 0x2000,
];

/// Lines of each chip (0: absent); written by `init` at boot.
static PRESENT: [AtomicU32; 2] = [const { AtomicU32::new(0) }; 2];

fn read(chip: usize, reg: u32) -> u32 {
    // SAFETY: VA[chip] maps the I/O APIC's register page uncached (`init`);
    // the index/data pair is the architectural access method. Interrupts
    // are off in the hypervisor, so no handler interleaves an access.
    unsafe {
        core::ptr::write_volatile((VA[chip] + REGSEL) as *mut u32, reg);
        core::ptr::read_volatile((VA[chip] + WIN) as *const u32)
    }
}

fn write(chip: usize, reg: u32, v: u32) {
    // SAFETY: as for `read`.
    unsafe {
        core::ptr::write_volatile((VA[chip] + REGSEL) as *mut u32, reg);
        core::ptr::write_volatile((VA[chip] + WIN) as *mut u32, v);
    }
}

/// Lines of chip `chip` (0 if absent).
fn lines(chip: usize) -> u32 {
    PRESENT[chip].load(Ordering::Relaxed)
}

/// Maps both I/O APICs and masks every line. Returns how many GSIs exist.
pub fn init() -> u32 {
    let mut total = 0;
    for chip in 0..2 {
        paging::map_mmio(VA[chip], FRAMES[chip] << 12);
        let ver = read(chip, 1);
        let n = if ver == u32::MAX {
            0
        } else {
            ((ver >> 16) & 0xff) + 1
        };
        PRESENT[chip].store(n.min(24), Ordering::Relaxed);
        for pin in 0..n.min(24) {
            write(chip, 0x10 + 2 * pin, 1 << 16);
        }
        total += n.min(24);
    }
    total
}

fn locate(gsi: u32) -> Option<(usize, u32)> {
    let (chip, pin) = ((gsi / 24) as usize, gsi % 24);
    (chip < 2 && pin < lines(chip)).then_some((chip, pin))
}

/// True if `gsi` exists.
pub fn exists(gsi: u32) -> bool {
    locate(gsi).is_some()
}

/// Routes `gsi` (masked) to its vector on the boot CPU: level-triggered
/// for GSIs above 15 (shared, PCI-style lines and microvm's virtio-mmio),
/// edge for the ISA range; active high.
pub fn route(gsi: u32) -> bool {
    let Some((chip, pin)) = locate(gsi) else {
        return false;
    };
    let apic_id = crate::arch::apic::id();
    let level = if gsi >= 16 { 1 << 15 } else { 0 };
    write(chip, 0x11 + 2 * pin, apic_id << 24);
    write(
        chip,
        0x10 + 2 * pin,
        (1 << 16) | level | (u32::from(VECTOR_BASE) + gsi),
    );
    true
}

/// Masks or unmasks `gsi`.
pub fn set_masked(gsi: u32, masked: bool) {
    if let Some((chip, pin)) = locate(gsi) {
        let lo = read(chip, 0x10 + 2 * pin);
        write(
            chip,
            0x10 + 2 * pin,
            if masked {
                lo | 1 << 16
            } else {
                lo & !(1 << 16)
            },
        );
    }
}
