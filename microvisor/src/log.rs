//! The serial console (polled COM1) and the hypervisor's log: levels chosen on
//! the command line (`loglvl=error|warn|info|debug`), every hypervisor line
//! prefixed `(MV)`, every guest console line prefixed `(dN name)`. Output is
//! line-buffered per domain so that interleaved domains never mix within a
//! line. Never blocks on anything but the UART.

use crate::arch::port::Port;
use core::fmt::{self, Write};
use spin::Mutex;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: Mutex<Level> = Mutex::new(Level::Info);
static SERIAL: Mutex<Serial> = Mutex::new(Serial);

pub struct Serial;

impl Serial {
    fn putc(b: u8) {
        let mut spins = 0u32;
        while Port::com1(5).inb() & 0x20 == 0 && spins < 1_000_000 {
            spins += 1;
        }
        Port::com1(0).outb(b);
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Self::putc(b'\r');
            }
            Self::putc(b);
        }
        Ok(())
    }
}

/// Programs COM1: 115200 8n1, FIFOs on, interrupts off.
pub fn init() {
    for (off, v) in [
        (1u16, 0u8),
        (3, 0x80),
        (0, 1),
        (1, 0),
        (3, 3),
        (2, 0xc7),
        (4, 0x03),
    ] {
        Port::com1(off).outb(v);
    }
}

/// Takes up to `out.len()` bytes typed on the serial console (polled: the
/// UART's receive FIFO holds 16). Returns how many.
pub fn read_input(out: &mut [u8]) -> usize {
    let mut n = 0;
    while n < out.len() && Port::com1(5).inb() & 1 != 0 {
        out[n] = Port::com1(0).inb();
        n += 1;
    }
    n
}

pub fn set_level(l: Level) {
    *LEVEL.lock() = l;
}

pub fn enabled(l: Level) -> bool {
    l <= *LEVEL.lock()
}

/// Parses `loglvl=` from the hypervisor command line.
pub fn configure(cmdline: &str) {
    for word in cmdline.split_ascii_whitespace() {
        if let Some(v) = word.strip_prefix("loglvl=") {
            let l = match v {
                "error" => Level::Error,
                "warn" | "warning" => Level::Warn,
                "debug" | "all" => Level::Debug,
                _ => Level::Info,
            };
            set_level(l);
        }
    }
}

/// Writes one hypervisor log line.
pub fn log(l: Level, args: fmt::Arguments) {
    if !enabled(l) {
        return;
    }
    let tag = match l {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info | Level::Debug => "",
    };
    let mut s = SERIAL.lock();
    let _ = writeln!(s, "(MV) {tag}{args}");
}

/// Writes raw text (crash reports) without a prefix, even if the lock is
/// held by the code that crashed.
pub fn raw(args: fmt::Arguments) {
    // SAFETY-free: force the lock open; the hypervisor is dying and one CPU.
    if SERIAL.is_locked() {
        // SAFETY: single CPU; the holder was interrupted by the crash and will
        // never run again.
        unsafe { SERIAL.force_unlock() };
    }
    let _ = SERIAL.lock().write_fmt(args);
}

/// Emits a complete guest console line with its domain prefix.
pub fn guest_line(domid: u16, name: &str, line: &[u8]) {
    let mut s = SERIAL.lock();
    let _ = write!(s, "(d{domid} {name}) ");
    for &b in line {
        let c = if b == b'\t' || (0x20..0x7f).contains(&b) {
            b
        } else {
            b'.'
        };
        Serial::putc(c);
    }
    let _ = s.write_str("\n");
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Debug, format_args!($($t)*)) } }
