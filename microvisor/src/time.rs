//! Time: TSC calibration against the APIC timer, hypervisor system time in
//! nanoseconds since boot, Xen's per-vCPU `vcpu_time_info` (version seqlock,
//! tsc_timestamp, system_time, tsc_to_system_mul/shift) and the wall clock in
//! shared info. Never trusts guest values: guests only read what is written
//! here. The arithmetic (the scale, the calibration, the RTC's date) is
//! `microvisor_core::time`.

use crate::arch::{apic, cpu};
use crate::mm;
use core::sync::atomic::{AtomicU64, Ordering};
use microvisor_core::time::{scale_delta, scale_delta_split, scale_for, split_shift};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
/// tsc_to_system_mul (low 32 bits) and tsc_shift (as i8, bits 32-39).
static SCALE: AtomicU64 = AtomicU64::new(0);
/// The same scale for `now_ns`: mul (low 32 bits), then its shift split
/// into a left (bits 32-39) and a right one (bits 40-47)
/// (`microvisor_core::time::split_shift`).
static NOW_SCALE: AtomicU64 = AtomicU64::new(0);
/// Wall-clock seconds at boot (from the CMOS RTC).
static BOOT_WALL: AtomicU64 = AtomicU64::new(0);

const CALIBRATION_NS: u32 = 10_000_000;

/// How often (system time, ns) a running vCPU's vcpu_time_info is
/// rewritten at the latest.
pub const REFRESH_NS: u64 = 1_000_000_000;

/// Measures the TSC frequency over 10 ms of the APIC timer.
pub fn init() {
    apic::start_masked(u32::MAX);
    let c0 = apic::current_count();
    let t0 = cpu::rdtsc();
    while c0.wrapping_sub(apic::current_count()) < CALIBRATION_NS {}
    let t1 = cpu::rdtsc();
    let elapsed_ns = c0.wrapping_sub(apic::current_count()) as u64;
    apic::start_masked(0);
    let hz = microvisor_core::time::hz_from(t1.wrapping_sub(t0), elapsed_ns);
    TSC_HZ.store(hz, Ordering::Relaxed);
    BOOT_TSC.store(t1, Ordering::Relaxed);
    let (mul, shift) = scale_for(hz);
    SCALE.store(mul as u64 | ((shift as u8 as u64) << 32), Ordering::Relaxed);
    let (left, right) = split_shift(shift);
    NOW_SCALE.store(
        mul as u64 | (u64::from(left) << 32) | (u64::from(right) << 40),
        Ordering::Relaxed,
    );
    BOOT_WALL.store(read_rtc(), Ordering::Relaxed);
    crate::info!(
        "time: TSC {} kHz, scale mul {:#x} shift {}",
        hz / 1000,
        mul,
        shift
    );
}

fn scale() -> (u32, i8) {
    let s = SCALE.load(Ordering::Relaxed);
    (s as u32, (s >> 32) as u8 as i8)
}

/// Nanoseconds since boot (Xen's "system time").
pub fn now_ns() -> u64 {
    let s = NOW_SCALE.load(Ordering::Relaxed);
    scale_delta_split(
        cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed)),
        s as u32,
        u32::from((s >> 32) as u8),
        u32::from((s >> 40) as u8),
    )
}

/// Busy-waits for `ns` nanoseconds (boot-time delays such as the ones
/// INIT-SIPI-SIPI asks for).
pub fn spin_ns(ns: u64) {
    let end = now_ns().saturating_add(ns);
    while now_ns() < end {
        core::hint::spin_loop();
    }
}

/// Writes the `time` of a vCPU's `vcpu_info` (`page`, a
/// `domain::VcpuInfo`), as Xen does: version odd while updating, even when
/// consistent.
pub fn update_vcpu_time(page: mm::SharedSlot) {
    const T: u64 = 32; // vcpu_info.time
    let (mul, shift) = scale();
    let tsc = cpu::rdtsc();
    let sys = scale_delta(
        tsc.wrapping_sub(BOOT_TSC.load(Ordering::Relaxed)),
        mul,
        shift,
    );
    let version = page.u32_at(T).load(Ordering::Relaxed);
    let v = version.wrapping_add(1) | 1;
    page.u32_at(T).store(v, Ordering::Release);
    page.u64_at(T + 8).store(tsc, Ordering::Relaxed);
    page.u64_at(T + 16).store(sys, Ordering::Relaxed);
    page.u32_at(T + 24).store(mul, Ordering::Relaxed);
    page.u8_at(T + 28).store(shift as u8, Ordering::Relaxed);
    page.u32_at(T).store(v.wrapping_add(1), Ordering::Release);
}

/// Fills the wall clock fields of shared info (wc_version, wc_sec, wc_nsec,
/// wc_sec_hi): the time of day at system time 0.
pub fn init_wallclock(page: mm::SharedFrame) {
    const W: u64 = 3072;
    let secs = BOOT_WALL.load(Ordering::Relaxed);
    page.u32_at(W).store(1, Ordering::Release);
    page.u32_at(W + 4).store(secs as u32, Ordering::Relaxed);
    page.u32_at(W + 8).store(0, Ordering::Relaxed);
    page.u32_at(W + 12)
        .store((secs >> 32) as u32, Ordering::Relaxed);
    page.u32_at(W).store(2, Ordering::Release);
}

/// Seconds since the Unix epoch from the CMOS RTC (0 if it looks absent).
fn read_rtc() -> u64 {
    use crate::arch::port::Port;
    let reg = |r: u8| {
        Port::CMOS_INDEX.outb(r);
        Port::CMOS_DATA.inb()
    };
    while reg(0x0a) & 0x80 != 0 {}
    let fields = microvisor_core::time::RtcFields {
        sec: reg(0),
        min: reg(2),
        hour: reg(4) & 0x7f,
        day: reg(7),
        month: reg(8),
        year: reg(9),
        bcd: reg(0x0b) & 4 == 0,
    };
    microvisor_core::time::rtc_to_unix(fields).unwrap_or(0)
}
