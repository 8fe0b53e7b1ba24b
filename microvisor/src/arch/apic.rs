//! The local APIC (xAPIC, memory-mapped): enabling it, end-of-interrupt, and
//! its timer, which drives the scheduler tick. QEMU runs the APIC timer at
//! 1 GHz with divide-by-1 (one count per nanosecond of its virtual clock);
//! the TSC is calibrated against it (`crate::time`).

use crate::mm::paging;

/// Where the hypervisor maps the APIC registers (L4 slot 264).
pub const APIC_VA: u64 = 0xFFFF_8400_0000_0000;
const APIC_PA: u64 = 0xFEE0_0000;

/// Vector of the APIC timer interrupt.
pub const TIMER_VECTOR: u8 = 0xf0;
/// Vector of APIC spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const SVR: u64 = 0xf0;
const EOI: u64 = 0xb0;
const LVT_TIMER: u64 = 0x320;
const TIMER_INIT: u64 = 0x380;
const TIMER_CUR: u64 = 0x390;
const TIMER_DIV: u64 = 0x3e0;
const TPR: u64 = 0x80;

fn read(reg: u64) -> u32 {
    // SAFETY: APIC_VA maps the APIC register page uncached (see `init`);
    // `reg` is one of the architectural register offsets above.
    unsafe { core::ptr::read_volatile((APIC_VA + reg) as *const u32) }
}

fn write(reg: u64, v: u32) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile((APIC_VA + reg) as *mut u32, v) }
}

/// Maps and software-enables the local APIC, timer masked.
pub fn init() {
    paging::map_mmio(APIC_VA, APIC_PA);
    init_local();
}

/// Software-enables this CPU's local APIC (the mapping is shared), timer
/// masked.
pub fn init_local() {
    write(TPR, 0);
    write(SVR, 0x100 | SPURIOUS_VECTOR as u32);
    write(TIMER_DIV, 0xb); // divide by 1
    write(LVT_TIMER, 1 << 16);
}

const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;

/// Sends an inter-processor interrupt command (`icr`: delivery mode,
/// level, vector) to the CPU with local-APIC ID `apic_id` (xAPIC: 8 bits),
/// then waits until the APIC has sent it.
fn send_ipi(apic_id: u32, icr: u32) {
    write(ICR_HIGH, (apic_id & 0xff) << 24);
    write(ICR_LOW, icr);
    while read(ICR_LOW) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
}

/// INIT (asserted, level-triggered), the first half of waking an AP.
pub fn send_init(apic_id: u32) {
    send_ipi(apic_id, 0x4500);
}

/// Start-up IPI: the AP begins in real mode at `page` * 4096 (`page` < 256).
pub fn send_startup(apic_id: u32, page: u8) {
    send_ipi(apic_id, 0x4600 | u32::from(page));
}

/// A fixed interrupt with `vector` to the CPU with local-APIC ID `apic_id`.
pub fn send_fixed(apic_id: u32, vector: u8) {
    send_ipi(apic_id, 0x4000 | u32::from(vector));
}

/// This CPU's local APIC id.
pub fn id() -> u32 {
    read(0x20) >> 24
}

/// True when an interrupt waits in the local APIC's request register (IRR:
/// accepted, not yet taken because the hypervisor runs with interrupts
/// off): the scheduler tick, a device interrupt. A long hypercall stops for
/// it (see `mmu::should_preempt`).
pub fn interrupt_pending() -> bool {
    (0..8u64).any(|i| read(0x200 + i * 0x10) != 0)
}

/// Signals end of interrupt.
pub fn eoi() {
    write(EOI, 0);
}

/// Starts the timer counting down from `count` with its interrupt masked
/// (for calibration); returns nothing, read progress with `current_count`.
pub fn start_masked(count: u32) {
    write(LVT_TIMER, 1 << 16);
    write(TIMER_INIT, count);
}

/// The timer's current count.
pub fn current_count() -> u32 {
    read(TIMER_CUR)
}

/// Fires `TIMER_VECTOR` every `ticks` timer counts (periodic mode).
pub fn start_periodic(ticks: u32) {
    write(LVT_TIMER, (1 << 17) | TIMER_VECTOR as u32);
    write(TIMER_INIT, ticks);
}
